"""Training draws: n malignant images from the train pool and `ratio` times as many benign."""
from __future__ import annotations

import re

import numpy as np

from ..choices import SAMPLERS
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
                      seed: int, extra_malignant: int = 0) -> np.ndarray:
    """Positions (into `labels`) of the training draw, sorted; seeded and reproducible.

    ratio 'natural' takes the whole pool (n_malignant then caps the malignant images only if
    it is a number smaller than the pool's). extra_malignant (synthetic images added elsewhere)
    counts towards the ratio: 293 real + 3000 synthetic at 1:2 draws 6586 benign."""
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
    total_m = n_m + extra_malignant
    n_b = int(round(total_m * k))
    if n_b > len(ben):
        with_syn = f" ({n_m} real + {extra_malignant} synthetic)" if extra_malignant else ""
        raise NotEnoughDataError(
            f"--ratio {ratio} with {total_m} malignant{with_syn} needs {n_b} benign images; the train pool has only "
            f"{len(ben)} (at most 1:{len(ben) / total_m:.2f} is possible)"
        )
    chosen_b = rng.choice(ben, size=n_b, replace=False)
    return np.sort(np.r_[chosen_m, chosen_b])




class EpochSampler:
    """Which store positions each epoch trains on, in batch order, for one process of `world`.

    none:     the fixed training draw, reshuffled each epoch.
    redraw:   the draw's malignant images every epoch, with a fresh benign sample of the same size
              as the draw's from the whole train pool, so a 1:2 run sees many more distinct benign
              images over its epochs.
    balanced: as many images as the draw holds, drawn with replacement so that malignant and benign
              are equally likely (class-weighted sampling; most useful with ratio natural).

    `fixed` positions of the draw (an extra data set's) are in every epoch as they are: redraw
    replaces only the other benign images, from `pool`.

    Every process computes the same epoch order from (seed, epoch) and takes a disjoint shard of
    it, padded by wrapping so that all processes run the same number of steps (as DDP needs).
    """

    def __init__(self, kind: str, labels: np.ndarray, draw: np.ndarray, pool: np.ndarray, seed: int,
                 rank: int = 0, world: int = 1, fixed: np.ndarray | None = None):
        if kind not in SAMPLERS:
            from ..errors import closest

            raise BadInputError(f"--sampler must be one of {', '.join(SAMPLERS)}, got '{kind}'{closest(kind, SAMPLERS)}")
        self.kind, self.labels, self.seed, self.rank, self.world = kind, labels, seed, rank, world
        self.draw = np.asarray(draw)
        self.malignant = self.draw[labels[self.draw] == 1]
        self.benign_drawn = self.draw[labels[self.draw] == 0]
        self.benign_fixed = np.intersect1d(self.benign_drawn, np.asarray(fixed if fixed is not None else [], dtype=int))
        pool = np.asarray(pool)
        self.benign_pool = pool[labels[pool] == 0]
        if kind == "balanced" and (len(self.malignant) == 0 or len(self.benign_drawn) == 0):
            raise NotEnoughDataError("--sampler balanced needs both classes in the training draw")

    def __len__(self) -> int:
        """Images per epoch for this process."""
        return -(-len(self.draw) // self.world)

    def full_epoch(self, epoch: int) -> np.ndarray:
        """Store positions of the whole epoch (all processes), shuffled."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.kind == "redraw":
            benign = rng.choice(self.benign_pool, size=len(self.benign_drawn) - len(self.benign_fixed), replace=False)
            order = np.r_[self.malignant, benign, self.benign_fixed]
        elif self.kind == "balanced":
            is_mal = rng.random(len(self.draw)) < 0.5
            order = np.where(is_mal, rng.choice(self.malignant, size=len(self.draw)),
                             rng.choice(self.benign_drawn, size=len(self.draw)))
        else:
            order = self.draw
        return order[rng.permutation(len(order))]

    def epoch(self, epoch: int) -> np.ndarray:
        """This process's shard of the epoch."""
        order = self.full_epoch(epoch)
        total = len(self) * self.world
        if total > len(order):  # wrap around so that every shard has the same length
            order = np.r_[order, order[: total - len(order)]]
        return order[self.rank::self.world]

    @property
    def train_prevalence(self) -> float:
        """The share of malignant images the model sees during training (what its
        probabilities are calibrated to, before any loss weighting)."""
        if self.kind == "balanced":
            return 0.5
        return len(self.malignant) / len(self.draw)
