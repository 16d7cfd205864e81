"""Decode one image (any size, JPEG/PNG/...) into a size x size RGB uint8 array.

The same function serves `prepare` and `predict`, so a model always sees images
processed exactly as its training data was.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

try:  # libjpeg-turbo with DCT-domain downscaling: the fastest JPEG decoder we measured
    import simplejpeg
except ImportError:  # pragma: no cover - optional speed-up
    simplejpeg = None

from ..choices import FITS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DecodeError(ValueError):
    """The bytes are not an image lesionlab can read."""


def _decode_jpeg_fast(data: bytes, min_side: int) -> np.ndarray | None:
    if simplejpeg is None or not data.startswith(b"\xff\xd8"):
        return None
    try:
        # min_height/min_width let libjpeg-turbo decode large images at 1/2..1/8 scale
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_side, min_width=min_side)
    except (ValueError, RuntimeError):
        return None  # CMYK, arithmetic coding, truncated...: let PIL try and explain


def _decode_pil(data: bytes, min_side: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF; the image itself is fine
            im = Image.open(io.BytesIO(data))
            im.draft("RGB", (min_side, min_side))  # JPEG only: cheap downscale on decode
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DecodeError(f"not a readable image ({e})") from None
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: keep the top 8 bits rather than clipping everything to white
        arr = np.asarray(im, dtype=np.uint32) >> 8
        im = Image.fromarray(arr.astype(np.uint8))
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def decode_resize(data: bytes, size: int, fit: str = "stretch") -> np.ndarray:
    """Bytes of an image file -> (size, size, 3) uint8 RGB.

    fit: 'stretch' resizes to a square whatever the aspect (as torchvision's Resize((s, s))),
    'crop' takes the central square first, 'pad' fits the image inside a black square.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    if not data:
        raise DecodeError("empty file")
    arr = _decode_jpeg_fast(data, size)
    im = Image.fromarray(arr) if arr is not None else _decode_pil(data, size)
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
        canvas.paste(im.resize((nw, nh), Image.BILINEAR), ((size - nw) // 2, (size - nh) // 2))
        return np.asarray(canvas, dtype=np.uint8)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
