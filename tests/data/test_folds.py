"""Grouped, stratified folds and the inner validation part a fold draws (data/folds.py)."""
import numpy as np
import pandas as pd
import pytest

from lesionlab.data.folds import inner_validation, make_folds
from lesionlab.errors import BadInputError, NotEnoughDataError


def _grouped_pool(n_groups=120, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_groups)
    groups = np.repeat([f"g{i}" for i in range(n_groups)], sizes)
    group_label = rng.random(n_groups) < 0.25
    labels = np.repeat(group_label, sizes).astype(int)
    labels[rng.random(len(labels)) < 0.05] = 0  # some groups mix classes
    ids = np.array([f"img{i}" for i in range(len(labels))])
    return ids, labels, groups


def test_folds_are_grouped_stratified_and_cover_the_pool_once_per_repeat():
    ids, labels, groups = _grouped_pool()
    pool = np.arange(5, len(ids))  # the first images belong to val/test
    folds = make_folds(ids, labels, groups, pool, k=4, repeats=2, seed=3)
    assert folds.assign.shape == (2, len(pool)) and set(np.unique(folds.assign)) == {0, 1, 2, 3}
    for r in range(2):
        held = np.concatenate([folds.held_out(r, f) for f in range(4)])
        assert sorted(held) == sorted(pool)  # every pool image in exactly one held-out fold
        frame = pd.DataFrame({"g": folds.groups, "fold": folds.assign[r]})
        assert frame.groupby("g")["fold"].nunique().max() == 1  # no group in two folds
        shares = [folds.labels[folds.assign[r] == f].mean() for f in range(4)]
        assert max(shares) - min(shares) < 0.12  # stratified
    assert not np.array_equal(folds.assign[0], folds.assign[1])  # repeats reshuffle
    again = make_folds(ids, labels, groups, pool, k=4, repeats=2, seed=3)
    assert again.sha256 == folds.sha256
    assert make_folds(ids, labels, groups, pool, k=4, repeats=2, seed=4).sha256 != folds.sha256


def test_fold_count_is_checked_against_the_groups_of_each_class():
    ids, labels, groups = _grouped_pool()
    pool = np.arange(len(ids))
    with pytest.raises(BadInputError, match="at least 2"):
        make_folds(ids, labels, groups, pool, k=1)
    n_mal = pd.Series(groups[labels == 1]).nunique()
    with pytest.raises(NotEnoughDataError, match=rf"{n_mal} of them with a malignant image") as e:
        make_folds(ids, labels, groups, pool, k=n_mal + 1)
    assert f"--folds {n_mal} or fewer" in str(e.value)


def test_inner_validation_takes_whole_groups_with_exact_counts():
    ids, labels, groups = _grouped_pool(300)
    positions = np.arange(len(ids))
    val, aside = inner_validation(labels, groups, positions, (10, 40), seed=[0, 0, 1])
    assert labels[val].sum() == 10 and (labels[val] == 0).sum() == 40
    rest = np.setdiff1d(positions, np.r_[val, aside])
    assert not set(groups[val]) & set(groups[rest])  # the training part shares no group with it
    with pytest.raises(NotEnoughDataError, match="inner validation"):
        inner_validation(labels, groups, positions[:30], (10, 40), seed=0)
