import io

import numpy as np
import pytest
from PIL import Image

from lesionlab.data.images import DecodeError, decode_resize
from lesionlab.demo import demo_files

SAMPLE = demo_files() / "ham10000_sample"


def _encode(arr, fmt, mode=None, **kw):
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("size", [32, 64, 128, 300])
def test_jpeg_close_to_full_decode_and_resize(size):
    # real images: the fast path may decode at 1/2..1/8 scale first; it must stay close to a
    # full decode followed by an antialiased resize
    data = (SAMPLE / "images").glob("*.jpg").__next__().read_bytes()
    got = decode_resize(data, size)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BILINEAR))
    assert got.shape == (size, size, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 2.0


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"), ("L", "JPEG")])
def test_other_modes_become_rgb(mode, fmt):
    arr = np.full((40, 30, 3), 120, np.uint8)
    out = decode_resize(_encode(arr, fmt, mode), 16)
    assert out.shape == (16, 16, 3)


def test_16bit_png_keeps_contrast():
    arr = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    out = decode_resize(buf.getvalue(), 64)
    assert out.min() < 10 and out.max() > 245  # not clipped to white


def test_fits():
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, :100] = 255  # left half white
    data = _encode(arr, "PNG")
    assert decode_resize(data, 50, "stretch")[:, :20].mean() > 250
    pad = decode_resize(data, 50, "pad")
    assert pad[:10].max() == 0 and pad[-10:].max() == 0  # black bars above and below
    crop = decode_resize(data, 50, "crop")  # central square: half white, half black
    assert crop[:, :20].mean() > 250 and crop[:, -20:].mean() < 5


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0truncated"])
def test_bad_bytes(data):
    with pytest.raises(DecodeError):
        decode_resize(data, 32)
