"""Decode one image (any size, JPEG/PNG/...) into a size x size RGB uint8 array.

The same function serves `prepare` and `predict`, so a model always sees images
processed exactly as its training data was.
"""
from __future__ import annotations

import contextlib
import io
import threading
import warnings
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

try:  # libjpeg-turbo with DCT-domain downscaling: the fastest JPEG decoder we measured
    import simplejpeg
except ImportError:  # pragma: no cover - optional speed-up
    simplejpeg = None

from ..choices import FITS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# The most pixels (width x height, as the file's header states them) lesionlab decodes: PIL's own
# refusal threshold (2 x Image.MAX_IMAGE_PIXELS). A header can claim 100000x100000 pixels in a
# few hundred bytes, and decoding it would take tens of GB of memory (a "decompression bomb"),
# so larger images are refused by name, before decoding. `--max-pixels` raises the limit.
DEFAULT_MAX_PIXELS = 178_956_970
# greyscale modes of more than 8 bits (16-bit PNG/TIFF, 32-bit integer, 32-bit float)
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class DecodeError(ValueError):
    """The bytes are not an image lesionlab can read."""


class TooManyPixelsError(DecodeError):
    """The header states more pixels than the limit: refused before decoding."""


def check_pixels(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    if width * height > max_pixels:
        raise TooManyPixelsError(
            f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} (a decompression "
            "bomb?); --max-pixels raises the limit for images you trust")


_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pil_check_lifted() -> Iterator[None]:
    """PIL's own bomb check off (it is a module-wide setting) while a header is read, for a limit
    above PIL's: check_pixels applies the limit the user chose right after."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Image.open (the header only, no pixels decoded) and the pixel limit."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    lift = pil_limit is not None and max_pixels > 2 * pil_limit  # PIL refuses above twice its setting
    try:
        with _pil_check_lifted() if lift else contextlib.nullcontext():
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        # over PIL's limit, which is ours too here: read the header again, unchecked, to name the size
        with _pil_check_lifted():
            im = Image.open(io.BytesIO(data))
    check_pixels(*im.size, max_pixels)
    return im


def _decode_jpeg_fast(data: bytes, min_side: int, max_pixels: int) -> np.ndarray | None:
    if simplejpeg is None or not data.startswith(b"\xff\xd8"):
        return None
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return None  # let PIL try and explain
    check_pixels(width, height, max_pixels)  # before libjpeg-turbo allocates anything
    try:
        # min_height/min_width let libjpeg-turbo decode large images at 1/2..1/8 scale
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_side, min_width=min_side)
    except (ValueError, RuntimeError):
        return None  # CMYK, arithmetic coding, truncated...: let PIL try and explain


def _wide_grey_to_uint8(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8 bits, scaled by the image's own range (min..max).
    Such files often use a fraction of their bit depth (a 16-bit scan holding 0..4095, a 32-bit
    image holding 0..255): keeping the top 8 bits, or clipping, would make them black or white."""
    arr = np.asarray(im)
    finite = np.isfinite(arr) if arr.dtype.kind == "f" else None
    if finite is not None and not finite.any():
        raise DecodeError(f"{im.mode} image holds no finite pixel values")
    lo = float(arr[finite].min() if finite is not None else arr.min())
    hi = float(arr[finite].max() if finite is not None else arr.max())
    if hi > lo:
        values = arr.astype(np.float32)
        if finite is not None:
            values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:  # one flat value, no range to scale by: place it on the bit depth (0..1 for float, else 0..65535)
        full = 1.0 if im.mode == "F" else 65535.0
        scaled = np.full(arr.shape, np.clip(lo / full, 0, 1) * 255.0, np.float32)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _decode_pil(data: bytes, min_side: int, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF (and on large images: limited here)
            im = _open_checked(data, max_pixels)
            im.draft("RGB", (min_side, min_side))  # JPEG only: cheap downscale on decode
            im.load()
    except DecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DecodeError(f"not a readable image ({e})") from None
    if im.mode in WIDE_GREY_MODES:
        im = _wide_grey_to_uint8(im)
    if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
        # transparent pixels over white: dermoscopic and clinical photographs have light backgrounds,
        # and black would put dark, lesion-like areas where the image has nothing
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def decode_resize(data: bytes, size: int, fit: str = "stretch", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes of an image file -> (size, size, 3) uint8 RGB.

    fit: 'stretch' resizes to a square whatever the aspect (as torchvision's Resize((s, s))),
    'crop' takes the central square first, 'pad' fits the image inside a black square.
    max_pixels: images whose header states more pixels are refused (TooManyPixelsError) unread.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    if not data:
        raise DecodeError("empty file")
    arr = _decode_jpeg_fast(data, size, max_pixels)
    im = Image.fromarray(arr) if arr is not None else _decode_pil(data, size, max_pixels)
    w, h = im.size
    if w < 1 or h < 1:
        raise DecodeError(f"image has no pixels ({w}x{h})")
    if fit == "crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    elif fit == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (size, size))
        canvas.paste(im.resize((nw, nh), Image.Resampling.BILINEAR), ((size - nw) // 2, (size - nh) // 2))
        return np.asarray(canvas, dtype=np.uint8)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
