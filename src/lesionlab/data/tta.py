"""Test-time augmentation: score every image under exact symmetries and average the logits.

    none   the image as it is
    flip   the 4 combinations of a horizontal and a vertical flip
    d4     those 4 and their transposes: the 8 flips and quarter turns of the square (the dihedral group D4)

Views are exact pixel permutations of uint8 NHWC batches (no resampling), so a model that is
invariant to them gives the same scores with and without TTA. Logits (not probabilities) are
averaged: the mean stays a logit, so evaluation's BCE and a later prior shift apply unchanged.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..choices import TTA_MODES
from ..errors import BadInputError, closest

_VIEWS = {"none": 1, "flip": 4, "d4": 8}


def check_mode(mode: str) -> str:
    if mode not in TTA_MODES:
        raise BadInputError(f"--tta must be one of {', '.join(TTA_MODES)}, got '{mode}'{closest(str(mode), TTA_MODES)}")
    return mode


def n_views(mode: str) -> int:
    return _VIEWS[check_mode(mode)]


def view(images: np.ndarray, k: int) -> np.ndarray:
    """The k-th symmetry (0 = identity) of uint8 (N, H, W, C) images: bit 0 flips W, bit 1 flips H,
    bit 2 transposes H and W."""
    x = images
    if k & 1:
        x = x[:, :, ::-1]
    if k & 2:
        x = x[:, ::-1]
    if k & 4:
        if x.shape[1] != x.shape[2]:
            raise BadInputError(f"--tta d4 needs square images, got {x.shape[1]}x{x.shape[2]}")
        x = x.transpose(0, 2, 1, 3)
    return np.ascontiguousarray(x)


def views(images: np.ndarray, mode: str) -> Iterator[np.ndarray]:
    for k in range(n_views(mode)):
        yield view(images, k)


def tta_logits(score: Callable[[np.ndarray], np.ndarray], images: np.ndarray, mode: str) -> np.ndarray:
    """The mean over the views of `score(view)` (logits of uint8 NHWC images)."""
    if check_mode(mode) == "none":
        return score(images)
    return np.mean([score(v) for v in views(images, mode)], axis=0)
