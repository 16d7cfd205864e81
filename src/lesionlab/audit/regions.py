"""Where the frame, the lesion and the skin are in an image the model sees, found without annotation.

The lesion mask: Otsu's threshold on the luminance blurred with a Gaussian, and the dark connected
component that covers most of the image's central window. Why this rule:
- no annotation and no tuning: Otsu picks the threshold that best splits the image into two tones;
- dermoscopic and TBP lesions are darker than the skin around them (melanocytic lesions almost always;
  pink, amelanotic ones are the exception: there the mask can miss, and the audit's gallery draws the
  mask's outline so that a reader sees it);
- the blur (sigma 2% of the side) removes hairs, pores and JPEG noise, which are thin and dark;
- the threshold is computed inside the outer frame, so a dark dermoscope rim or a black frame does
  not pull it;
- the lesion is centred by acquisition (a dermoscopic photo is framed on its lesion; ISIC 2024 crops
  are cut around the lesion the TBP software found), and dark corners, rims and ink marks are
  peripheral: the component covering most of the central window (the middle half of each side) is
  the lesion, not the largest dark blob anywhere;
- holes are filled (regression areas, bright globules belong to the lesion) and the mask is grown by
  3% of the side, so the lesion's border counts as lesion (Grad-CAMs of deep layers are coarse).
When the image is flat (Otsu's two tones differ by under 20 luminance levels of 255: skin noise, not a
lesion), no dark component reaches the central window, or the one
found is a speck (under 0.5% of the image), the mask falls back to a centred disc of radius 25% of
the side, and the audit counts how often, by reason.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

FRAME_SHARE = 0.15      # the outer frame: 15% of each side
BLUR = 0.02             # Gaussian sigma of the luminance blur, as a share of the side
CENTRAL = 0.25          # the central window: within 25% of the side from the centre, on each axis
GROW = 0.03             # the lesion mask grown by 3% of the side
MIN_AREA = 0.005        # a component under 0.5% of the image is a speck, not a lesion
MIN_CONTRAST = 20.0     # luminance levels between Otsu's two tones: below this the image is flat and Otsu splits noise
FALLBACK_RADIUS = 0.25  # the centred disc used when no lesion is found

MASK_RULE = ("Otsu threshold of the luminance (BT.601) blurred with sigma 2% of the side, computed inside the frame "
             "(its two tones at least 20 of 255 levels apart); the dark component covering most of the central window "
             "(middle half of each side), holes filled, grown by 3% of the side; else a centred disc of radius 25% of the side")
FALLBACK_REASONS = ("flat", "none_central", "speck")

_LUMA = np.array([0.299, 0.587, 0.114])


def luminance(image: np.ndarray) -> np.ndarray:
    """Float luminance of uint8 RGB pixels, (..., 3) -> (...) (ITU-R BT.601 weights, as PIL's 'L')."""
    return np.asarray(image, dtype=np.float64) @ _LUMA


def frame_width(side: int, share: float = FRAME_SHARE) -> int:
    return int(round(share * side))


def frame_mask(height: int, width: int, share: float = FRAME_SHARE) -> np.ndarray | None:
    """True in the outer frame (`share` of each side from every edge); None when the image is too
    small for it (the band would be under one pixel, or leave no inside)."""
    fh, fw = frame_width(height, share), frame_width(width, share)
    if fh < 1 or fw < 1 or 2 * fh >= height or 2 * fw >= width:
        return None
    mask = np.ones((height, width), bool)
    mask[fh:height - fh, fw:width - fw] = False
    return mask


def min_side_for_frame(share: float = FRAME_SHARE) -> int:
    """The smallest square side with a frame of at least one pixel."""
    side = 3
    while frame_mask(side, side, share) is None:
        side += 1
    return side


def centre_disc(height: int, width: int, radius: float = FALLBACK_RADIUS) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = (height - 1) / 2, (width - 1) / 2
    return ((yy - cy) / (radius * height)) ** 2 + ((xx - cx) / (radius * width)) ** 2 <= 1


def _central_window(height: int, width: int) -> np.ndarray:
    window = np.zeros((height, width), bool)
    dy, dx = max(1, round(CENTRAL * height)), max(1, round(CENTRAL * width))
    cy, cx = height // 2, width // 2
    window[max(0, cy - dy):cy + dy, max(0, cx - dx):cx + dx] = True
    return window


def otsu_threshold(values: np.ndarray) -> float | None:
    """Otsu's threshold of luminance values (0..255): values below it form the dark class. None when the
    two classes' means differ by less than MIN_CONTRAST levels (skin noise, not a lesion). Written here (a
    256-bin histogram) because scikit-image, which has it, is not a dependency; OpenCV's comes only
    through grad-cam."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or values.max() - values.min() < MIN_CONTRAST:
        return None
    hist, edges = np.histogram(values, bins=256, range=(0, 256))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1
    t = float(edges[int(np.argmax(between)) + 1])
    dark, light = values[values < t], values[values >= t]
    if not len(dark) or not len(light) or light.mean() - dark.mean() < MIN_CONTRAST:
        return None
    return t


def lesion_mask(image: np.ndarray, frame: np.ndarray | None) -> tuple[np.ndarray, str]:
    """(mask, source) of one uint8 RGB image: source 'otsu', or the fallback's reason (FALLBACK_REASONS)."""
    h, w = image.shape[:2]
    side = min(h, w)
    lum = ndimage.gaussian_filter(luminance(image), sigma=max(0.5, BLUR * side))
    inside = ~frame if frame is not None else np.ones((h, w), bool)
    t = otsu_threshold(lum[inside])
    if t is None:
        return centre_disc(h, w), "flat"
    labels, n = ndimage.label(lum < t, structure=np.ones((3, 3), int))
    counts = np.bincount(labels[_central_window(h, w)], minlength=n + 1)
    counts[0] = 0
    if n == 0 or counts.max() == 0:
        return centre_disc(h, w), "none_central"
    mask = ndimage.binary_fill_holes(labels == int(np.argmax(counts)))
    if mask.mean() < MIN_AREA:
        return centre_disc(h, w), "speck"
    grow = int(round(GROW * side))
    if grow:
        mask = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=grow)
    return mask, "otsu"


def skin_colour(image: np.ndarray, lesion: np.ndarray, frame: np.ndarray | None) -> np.ndarray:
    """The image's own skin colour (uint8 RGB): the per-channel median of the pixels outside the lesion and
    inside the frame (a median, so hairs and a rim reaching inside count for nothing); outside the lesion
    anywhere when that leaves under 1% of the image, the whole image when even that does."""
    candidates = ~lesion & (~frame if frame is not None else True)
    if candidates.sum() < 0.01 * lesion.size:
        candidates = ~lesion
    if candidates.sum() < 0.01 * lesion.size:
        candidates = np.ones_like(lesion)
    return np.median(image[candidates], axis=0).round().astype(np.uint8)


def occlude(image: np.ndarray, region: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """A copy of `image` with `region` painted in `colour`."""
    out = image.copy()
    out[region] = colour
    return out


def mass_share(cam: np.ndarray, region: np.ndarray) -> float:
    """The share of a (non-negative) map's mass inside `region`; nan for an empty map."""
    cam = np.clip(np.asarray(cam, dtype=np.float64), 0, None)
    total = cam.sum()
    return float(cam[region].sum() / total) if total > 1e-12 else float("nan")


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (for drawing it over an overlay)."""
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)
