"""Late fusion (the yardstick for stacking), and the image score as an offset. Paired intervals
that resample whole groups are metrics.paired_bootstrap(..., groups=...).

Late fusion is the rank average of the image and tabular probabilities. A rank needs a reference
set; lesionlab ranks every score within the train pool's out-of-fold scores of the same model
(its empirical distribution, ties averaged), so that one new image gets the same fused score
whatever else is scored beside it, and a run's test scores are reproduced by predict.
"""
from __future__ import annotations

import numpy as np


def ecdf_rank(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The mid-rank of each x within `reference` as a share in [0, 1] (ties count half)."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    x = np.asarray(x, dtype=np.float64)
    below = np.searchsorted(ref, x, side="left")
    upto = np.searchsorted(ref, x, side="right")
    return (below + upto) / (2.0 * len(ref))


def rank_average(image: np.ndarray, tabular: np.ndarray, ref_image: np.ndarray, ref_tabular: np.ndarray) -> np.ndarray:
    return (ecdf_rank(ref_image, image) + ecdf_rank(ref_tabular, tabular)) / 2


# An image model's probability can round to exactly 0 or 1 in float32; clipped there, its logit stays finite
# and keeps the order of every other score (scores already tied at 0 or 1 stay tied)
LOGIT_EPS = 1e-7


def image_logit(prob: np.ndarray) -> np.ndarray:
    """The image model's log-odds: the offset fusion's starting point for each row (engines.py)."""
    p = np.clip(np.asarray(prob, dtype=np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)
