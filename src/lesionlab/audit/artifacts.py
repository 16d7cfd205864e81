"""Simple acquisition artifacts, detected from the pixels alone, so that metrics can be split by them.

Each detector looks at what a shortcut would be made of and is deliberately plain (thresholds below,
each with its reason); they flag images for strata, they do not grade them.
- dark_corners: a dermoscope's vignette or circular rim: all 4 corner patches (10% of the side) average under
  half the skin's luminance, or at least 2 do while the middles of the two edges beside each do not (a dark
  band along one side darkens two corners and the edge between them: a line, not a vignette).
- border_lines: a straight, strong edge parallel to a side inside the outer frame (the edge of a black
  bar or frame, a ruler's edge, a drawn line): a row (or column) of the frame band where at least 60% of
  the central 80% of its pixels differ from the next row by more than 40 luminance levels (of 255). A
  round rim crosses any one row over a short stretch only, so it does not count here.
- frame: a large dark or coloured frame: at least 80% of the outermost ring (5% of the side) is near black
  (under 40% of the median luminance inside the ring), or at least 80% of it is a colour skin and lesions
  never are (not red-dominant: red more than 10 levels under green or blue, and saturated: channels more than
  40 levels apart). Skin and lesions are red-dominant; a lesion that runs off the image is not near black
  against itself; so neither counts. The image's own skin colour is not used: with a large lesion it is the
  least certain estimate.
"""
from __future__ import annotations

import numpy as np

from .regions import luminance

ARTIFACTS = ("dark_corners", "border_lines", "frame")
DESCRIPTIONS = {"dark_corners": "dark corners / dermoscope vignette",
                "border_lines": "strong straight lines along the border",
                "frame": "large dark or coloured frame"}

CORNER = 0.10          # corner patch: 10% of each side
DARK_CORNER = 0.5      # darker than half the skin's luminance
MIN_DARK_CORNERS = 2   # one dark corner is often a lesion's or a shadow's; two or more is the optic
LINE_STEP = 40.0       # luminance step between neighbouring rows that counts as an edge
LINE_COVER = 0.6       # share of a row's central 80% that must hold the step
RING = 0.05            # the outermost ring checked for a frame
FRAME_DARK = 0.4       # near black against the image's inside (a rim or bar; a lesion is 40-80% of the skin)
FRAME_COVER = 0.8      # share of the ring that must be near black, or of a colour unlike skin
NOT_RED = 10.0         # a colour unlike skin: red this many levels under green or blue ...
SATURATED = 40.0       # ... with its channels this many levels apart (greys and blacks are not colours)


def dark_corners(image: np.ndarray, skin: np.ndarray) -> bool:
    lum = luminance(image)
    h, w = lum.shape
    ch, cw = max(1, round(CORNER * h)), max(1, round(CORNER * w))
    my, mx = (h - ch) // 2, (w - cw) // 2
    top, bottom, left, right = (lum[:ch, mx:mx + cw].mean(), lum[-ch:, mx:mx + cw].mean(),
                                lum[my:my + ch, :cw].mean(), lum[my:my + ch, -cw:].mean())
    corners = ((lum[:ch, :cw], top, left), (lum[:ch, -cw:], top, right), (lum[-ch:, :cw], bottom, left),
               (lum[-ch:, -cw:], bottom, right))
    limit = DARK_CORNER * _skin_luminance(skin)
    dark = [float(c.mean()) < limit for c, _, _ in corners]
    alone = [d and a >= limit and b >= limit for d, (_, a, b) in zip(dark, corners)]
    return all(dark) or sum(alone) >= MIN_DARK_CORNERS


def _has_line(lum: np.ndarray, band: int) -> bool:
    """A strong step between neighbouring rows within `band` rows of the top or bottom edge."""
    h, w = lum.shape
    c0, c1 = int(round(0.1 * w)), max(int(round(0.9 * w)), int(round(0.1 * w)) + 1)
    steps = np.abs(np.diff(lum[:, c0:c1], axis=0)) > LINE_STEP  # (h - 1, cols): row r against row r + 1
    rows = list(range(0, min(band, h - 1))) + list(range(max(0, h - 1 - band), h - 1))
    return any(steps[r].mean() >= LINE_COVER for r in rows)


def border_lines(image: np.ndarray, band: int) -> bool:
    """`band`: the frame's width in pixels (rows or columns from each edge that are searched)."""
    if band < 1:
        return False
    lum = luminance(image)
    return _has_line(lum, band) or _has_line(lum.T, band)


def _skin_luminance(skin: np.ndarray) -> float:
    return float(np.asarray(skin, dtype=np.float64) @ np.array([0.299, 0.587, 0.114]))


def frame(image: np.ndarray) -> bool:
    h, w = image.shape[:2]
    r = max(1, round(RING * min(h, w)))
    ring = np.ones((h, w), bool)
    ring[r:h - r, r:w - r] = False
    pixels = image[ring].astype(np.float64)
    inside = float(np.median(luminance(image[~ring])))
    if float(np.mean(luminance(pixels) < FRAME_DARK * inside)) >= FRAME_COVER:
        return True
    r_, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    coloured = (r_ < np.maximum(g, b) - NOT_RED) & (pixels.max(axis=1) - pixels.min(axis=1) > SATURATED)
    return float(np.mean(coloured)) >= FRAME_COVER


def detect(image: np.ndarray, skin: np.ndarray, band: int) -> dict[str, bool]:
    """Every detector on one uint8 RGB image, given its skin colour and the frame's width in pixels."""
    return {"dark_corners": dark_corners(image, skin), "border_lines": border_lines(image, band),
            "frame": frame(image)}
