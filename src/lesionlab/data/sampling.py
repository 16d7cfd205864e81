"""Training draws: n malignant images from the train pool and `ratio` times as many benign."""
from __future__ import annotations

import re

import numpy as np

from ..errors import BadInputError, NotEnoughDataError


def parse_ratio(text: str) -> float | None:
    """'1:2' -> 2.0 benign per malignant; 'natural' -> None (the whole pool)."""
    t = str(text).strip().lower()
    if t == "natural":
        return None
    m = re.fullmatch(r"1\s*:\s*(\d+(?:\.\d+)?)", t)
    if not m or float(m.group(1)) <= 0:
        raise BadInputError(f"--ratio must be 1:K malignant:benign with K > 0 (e.g. 1:2) or 'natural', got '{text}'")
    return float(m.group(1))


def draw_training_set(labels: np.ndarray, pool: np.ndarray, ratio: str, n_malignant: int | str,
                      seed: int) -> np.ndarray:
    """Positions (into `labels`) of the training draw, sorted; seeded and reproducible.

    ratio 'natural' takes the whole pool (n_malignant then caps the malignant images only if
    it is a number smaller than the pool's)."""
    k = parse_ratio(ratio)
    pool = np.asarray(pool)
    mal, ben = pool[labels[pool] == 1], pool[labels[pool] == 0]
    rng = np.random.default_rng(seed)
    if n_malignant == "all":
        n_m = len(mal)
    else:
        n_m = int(n_malignant)
        if n_m < 1:
            raise BadInputError(f"--n-malignant must be at least 1 (or 'all'), got {n_malignant}")
        if k is None:
            n_m = min(n_m, len(mal))
    if n_m > len(mal):
        raise NotEnoughDataError(f"--n-malignant {n_m}: the train pool has only {len(mal)} malignant images")
    chosen_m = rng.choice(mal, size=n_m, replace=False)
    if k is None:
        return np.sort(np.r_[chosen_m, ben])
    n_b = int(round(n_m * k))
    if n_b > len(ben):
        raise NotEnoughDataError(
            f"--ratio {ratio} with {n_m} malignant needs {n_b} benign images; the train pool has only {len(ben)} "
            f"(at most 1:{len(ben) / n_m:.2f} is possible)"
        )
    chosen_b = rng.choice(ben, size=n_b, replace=False)
    return np.sort(np.r_[chosen_m, chosen_b])
