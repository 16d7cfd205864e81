"""Late fusion (the yardstick for stacking) and paired intervals that resample whole groups.

Late fusion is the rank average of the image and tabular probabilities. A rank needs a reference
set; lesionlab ranks every score within the train pool's out-of-fold scores of the same model
(its empirical distribution, ties averaged), so that one new image gets the same fused score
whatever else is scored beside it, and a run's test scores are reproduced by predict.
"""
from __future__ import annotations

import numpy as np

from ..metrics import compute_metric


def ecdf_rank(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The mid-rank of each x within `reference` as a share in [0, 1] (ties count half)."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    x = np.asarray(x, dtype=np.float64)
    below = np.searchsorted(ref, x, side="left")
    upto = np.searchsorted(ref, x, side="right")
    return (below + upto) / (2.0 * len(ref))


def rank_average(image: np.ndarray, tabular: np.ndarray, ref_image: np.ndarray, ref_tabular: np.ndarray) -> np.ndarray:
    return (ecdf_rank(ref_image, image) + ecdf_rank(ref_tabular, tabular)) / 2


def grouped_resamples(y: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """n_boot index arrays, each a resample of whole groups with replacement, groups with a
    malignant image and groups without drawn separately (so each resample has both classes)."""
    y = np.asarray(y)
    codes, uniq = _codes(groups)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(uniq))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    positive = np.bincount(codes, weights=y, minlength=len(uniq)) > 0
    strata = [np.flatnonzero(positive), np.flatnonzero(~positive)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        chosen = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata if len(s)])
        lens = counts[chosen]
        offsets = np.repeat(starts[chosen] - np.r_[0, np.cumsum(lens)[:-1]], lens)
        out.append(order[offsets + np.arange(lens.sum())])
    return out


def _codes(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return codes, uniq


def grouped_paired_bootstrap(y: np.ndarray, groups: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray,
                             metrics=("roc_auc", "pauc_80", "average_precision"), n_boot: int = 2000,
                             seed: int = 0, level: float = 0.95) -> dict[str, dict[str, float]]:
    """B - A on the same resampled groups (patients or lesions), with a percentile interval."""
    y = np.asarray(y).astype(np.int8)
    a, b = np.asarray(prob_a, dtype=np.float64), np.asarray(prob_b, dtype=np.float64)
    idx = grouped_resamples(y, groups, n_boot, seed)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    out = {}
    for m in metrics:
        va, vb = compute_metric(m, y, a), compute_metric(m, y, b)
        diffs = np.array([compute_metric(m, y[i], b[i]) - compute_metric(m, y[i], a[i]) for i in idx])
        out[m] = {"a": va, "b": vb, "diff": vb - va, "lo": float(np.quantile(diffs, lo)),
                  "hi": float(np.quantile(diffs, hi)), "p_b_not_better": float(np.mean(diffs <= 0))}
    return out
