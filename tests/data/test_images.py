import io

import numpy as np
import pytest
from PIL import Image

from hostile_files import jpeg_claiming, png_claiming
from lesionlab.data.images import DecodeError, TooManyPixelsError, decode_resize
from lesionlab.workflows.demo import demo_files

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


# ---------------------------------------------------------------- hostile headers and wide greyscale


@pytest.mark.parametrize("data", [png_claiming(100_000, 100_000), jpeg_claiming(60_000, 60_000)], ids=["png", "jpeg"])
def test_decompression_bomb_is_a_decode_error_before_decoding(data):
    with pytest.raises(DecodeError, match=r"pixels is over the limit of 178,956,970.*--max-pixels"):
        decode_resize(data, 32)


def test_jpeg_header_size_is_checked_on_the_fast_path():
    # simplejpeg reads the frame header: the refusal names the size it states, before any decoding
    with pytest.raises(TooManyPixelsError, match=r"60000x60000 = 3,600,000,000 pixels"):
        decode_resize(jpeg_claiming(60_000, 60_000), 32)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_max_pixels_lowers_and_raises_the_limit(fmt, monkeypatch):
    data = _encode(np.full((100, 120, 3), 90, np.uint8), fmt)
    with pytest.raises(TooManyPixelsError, match=r"120x100 = 12,000 pixels is over the limit of 11,999"):
        decode_resize(data, 16, max_pixels=11_999)
    assert decode_resize(data, 16, max_pixels=12_000).shape == (16, 16, 3)
    # above PIL's own limit (a module-wide setting, here made tiny), lesionlab's limit decides,
    # and PIL's setting is left as it was
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_resize(data, 16, max_pixels=20_000).shape == (16, 16, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(TooManyPixelsError, match="120x100 = 12,000 pixels is over the limit of 1,500"):
        decode_resize(data, 16, max_pixels=1500)


def _gradient(high: float, dtype) -> np.ndarray:
    return np.tile(np.linspace(0, high, 64), (48, 1)).astype(dtype)


@pytest.mark.parametrize("mode,fmt,high,dtype", [
    ("I;16", "PNG", 255, np.uint16),        # a 16-bit PNG using 8 bits of range: was black
    ("I;16", "PNG", 4095, np.uint16),       # 12-bit data in 16 bits: was nearly black
    ("I", "TIFF", 255, np.int32),           # 32-bit integer holding 0..255: was black
    ("I", "TIFF", 1_000_000, np.int32),     # 32-bit integer beyond 16 bits: wrapped around
    ("F", "TIFF", 1.0, np.float32),         # float in 0..1: was black
])
def test_wide_greyscale_scaled_by_its_range(mode, fmt, high, dtype):
    im = Image.fromarray(_gradient(high, dtype))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    assert Image.open(io.BytesIO(buf.getvalue())).mode == mode  # a real file of that mode, written by PIL
    out = decode_resize(buf.getvalue(), 64)[..., 0].astype(int)
    assert out.min() <= 5 and out.max() >= 250, (out.min(), out.max())
    assert (np.diff(out, axis=1) >= 0).all()  # still a left-to-right gradient


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_a_transparent_png_is_composited_on_white(mode):
    from lesionlab.data.images import decode_resize

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 30  # dark everywhere, opaque only in the middle, half transparent in one corner
    rgba[2:6, 2:6, 3] = 255
    rgba[0, 7, 3] = 128
    im = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        im = im.convert("LA")
    elif mode == "P":  # palette index 0 transparent, 1 dark
        im = Image.fromarray((rgba[..., 3] == 255).astype(np.uint8), "P")
        im.putpalette([0, 0, 0, 30, 30, 30])
    buf = io.BytesIO()
    im.save(buf, "PNG", **({"transparency": 0} if mode == "P" else {}))
    out = decode_resize(buf.getvalue(), 8)
    assert (out[0, 0] == 255).all()  # transparent: white, not black
    assert (out[3, 3] == 30).all()  # opaque: as it is
    if mode != "P":
        assert 130 <= out[0, 7, 0] <= 145  # half transparent: halfway between the colour and white
