"""Late fusion and the grouped paired bootstrap (tabular/fusion.py)."""
import numpy as np
import pandas as pd
import pytest

from lesionlab.metrics import grouped_resamples, paired_bootstrap
from lesionlab.tabular.fusion import ecdf_rank, rank_average


def test_late_fusion_ranks_against_the_reference_scores():
    ref = np.array([0.1, 0.2, 0.2, 0.4])
    assert ecdf_rank(ref, np.array([0.0, 0.1, 0.2, 0.3, 0.5])).tolist() == pytest.approx([0, 0.125, 0.5, 0.75, 1])
    fused = rank_average(np.array([0.4]), np.array([0.1]), ref, ref)
    assert fused.tolist() == pytest.approx([(0.875 + 0.125) / 2])


def test_grouped_resamples_keep_groups_whole_and_both_classes():
    groups = np.array(["a", "a", "b", "c", "c", "c", "d"])
    y = np.array([1, 1, 0, 0, 0, 0, 1])
    for idx in grouped_resamples(y, groups, 50, seed=3):
        drawn = pd.Series(groups[idx]).value_counts()
        sizes = pd.Series(groups).value_counts()
        assert all(drawn[g] % sizes[g] == 0 for g in drawn.index)  # a group comes whole, or several times whole
        assert 0 < y[idx].sum() < len(idx)
    same = np.array([.9, .8, .1, .2, .3, .2, .7])
    res = paired_bootstrap(y, same, same, 0.5, 0.5, ("roc_auc",), n_boot=20, groups=groups)
    assert res["roc_auc"]["diff"] == 0 and res["roc_auc"]["lo"] == 0 == res["roc_auc"]["hi"]
