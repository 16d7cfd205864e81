"""Grouped, stratified K-fold assignment of a split's train pool (cross-validation).

scikit-learn's StratifiedGroupKFold does the assignment: no group (patient, else lesion, else
image: the split's own rule) falls in two folds, and each fold's share of malignant images stays
close to the pool's. Repeats reshuffle with seeds derived from (seed, repeat). The assignment is
recorded by a SHA-256 over (id, repeat, fold), so two cross-validations can be paired on the
same out-of-fold images only when their hashes agree.

Each fold also needs an inner validation part (checkpoint, early stopping, threshold), taken
from the other folds and never from the held-out one: `inner_validation` draws whole groups
with the split's own validation counts (e.g. 50:1000) by the rule `split` uses, so that a fold
trains and chooses exactly as `train` does on the split.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import BadInputError, NotEnoughDataError
from .splits import _choose


@dataclass(frozen=True)
class Folds:
    """The fold of every pool image, per repeat."""

    pool: np.ndarray     # table positions of the train pool, ascending
    ids: np.ndarray      # their ids
    groups: np.ndarray   # their group keys
    labels: np.ndarray
    assign: np.ndarray   # (repeats, len(pool)) fold index 0..k-1
    k: int
    seed: int

    @property
    def repeats(self) -> int:
        return int(self.assign.shape[0])

    @property
    def sha256(self) -> str:
        return folds_hash(self.ids, self.assign)

    def held_out(self, repeat: int, fold: int) -> np.ndarray:
        return self.pool[self.assign[repeat] == fold]

    def others(self, repeat: int, fold: int) -> np.ndarray:
        return self.pool[self.assign[repeat] != fold]

    def table(self) -> pd.DataFrame:
        """One row per (repeat, image): id, group, label, repeat, fold."""
        return pd.concat([pd.DataFrame({"id": self.ids, "group": self.groups, "label": self.labels,
                                        "repeat": r, "fold": self.assign[r]}) for r in range(self.repeats)],
                         ignore_index=True)


def folds_hash(ids, assign) -> str:
    """SHA-256 of the sorted lines 'id,repeat,fold': the same folds give the same hash whatever the order."""
    ids = np.asarray(ids).astype(str)
    assign = np.atleast_2d(np.asarray(assign))
    lines = sorted(f"{i},{r},{int(f)}" for r in range(assign.shape[0]) for i, f in zip(ids, assign[r]))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def repeat_seed(seed: int, repeat: int) -> int:
    return int(np.random.default_rng([seed, repeat]).integers(0, 2**31 - 1))


def check_fold_count(k: int, labels: np.ndarray, groups: np.ndarray, group_rule: str = "group") -> None:
    """--folds must be at least 2 and at most the number of groups holding each class, so that
    every held-out fold holds both classes."""
    if k < 2:
        raise BadInputError(f"--folds must be at least 2, got {k}")
    frame = pd.DataFrame({"g": groups, "y": labels})
    n_groups = frame["g"].nunique()
    mal = frame.loc[frame["y"] == 1, "g"].nunique()
    ben = frame.loc[frame["y"] == 0, "g"].nunique()
    unit = {"patient_id": "patients", "lesion_id": "lesions", "none": "images"}.get(group_rule, "groups")
    if k > min(mal, ben):
        most = f"use --folds {min(mal, ben)} or fewer" if min(mal, ben) >= 2 else "too few for cross-validation"
        raise NotEnoughDataError(
            f"--folds {k}: the train pool has {n_groups} {unit} (the split's group rule), {mal} of them with a "
            f"malignant image and {ben} with a benign one; every held-out fold needs both classes: {most}")


def make_folds(ids: np.ndarray, labels: np.ndarray, groups: np.ndarray, pool: np.ndarray, k: int, repeats: int = 1,
               seed: int = 0, group_rule: str = "group") -> Folds:
    """StratifiedGroupKFold(k, shuffle) over the pool's images, once per repeat."""
    from sklearn.model_selection import StratifiedGroupKFold

    if repeats < 1:
        raise BadInputError(f"--repeats must be at least 1, got {repeats}")
    pool = np.sort(np.asarray(pool))
    y, g = np.asarray(labels)[pool].astype(int), np.asarray(groups)[pool]
    check_fold_count(k, y, g, group_rule)
    assign = np.empty((repeats, len(pool)), np.int64)
    for r in range(repeats):
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=repeat_seed(seed, r))
        for fold, (_, held) in enumerate(cv.split(np.zeros(len(pool)), y, g)):
            assign[r, held] = fold
    return Folds(pool, np.asarray(ids)[pool].astype(str), g.astype(str), y, assign, k, seed)


def inner_validation(labels: np.ndarray, groups: np.ndarray, positions: np.ndarray, counts: tuple[int, int],
                     seed: int | list[int], where: str = "the other folds") -> tuple[np.ndarray, np.ndarray]:
    """(validation positions, positions set aside) from `positions`: whole groups, malignant-holding
    ones first, with exactly `counts` (malignant, benign) images, as `split` draws its validation set.
    Images of a chosen group beyond the counts are set aside: they join neither the validation part
    nor the training pool (their group is in validation)."""
    positions = np.asarray(positions)
    frame = pd.DataFrame({"key": np.asarray(groups)[positions], "label": np.asarray(labels)[positions], "pos": positions})
    per_group = frame.groupby("key")["label"].agg(m="sum", n="size")
    per_group["b"] = per_group["n"] - per_group["m"]
    rng = np.random.default_rng(seed)
    try:
        chosen = _choose(per_group, counts[0], counts[1], rng, "val")
    except NotEnoughDataError:
        raise NotEnoughDataError(
            f"inner validation: {where} hold {int(per_group['m'].sum())} malignant and {int(per_group['b'].sum())} "
            f"benign images; the split's validation counts {counts[0]}:{counts[1]} cannot be drawn from them in "
            "whole groups (use fewer --folds)") from None
    rows = frame[frame["key"].isin(set(chosen))]
    val, aside = [], []
    for label, want in ((1, counts[0]), (0, counts[1])):
        pos = np.sort(rows.loc[rows["label"] == label, "pos"].to_numpy())
        keep = np.sort(rng.choice(len(pos), size=want, replace=False)) if len(pos) > want else np.arange(len(pos))
        mask = np.zeros(len(pos), bool)
        mask[keep] = True
        val.append(pos[mask])
        aside.append(pos[~mask])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(aside))
