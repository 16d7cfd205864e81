"""Grouped stratified folds of the tabular model (tabular/model.py)."""
import numpy as np
import pandas as pd
import pytest

from lesionlab.tabular.model import grouped_folds


def test_grouped_folds_keep_each_group_in_one_fold():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 3).astype(str)
    y = np.repeat(rng.random(40) < 0.3, 3).astype(int)
    folds = grouped_folds(y, groups, 4, seed=0)
    assert pd.Series(folds).groupby(groups).nunique().max() == 1
    assert all(y[folds == f].sum() > 0 for f in range(4))
    from lesionlab.errors import NotEnoughDataError

    with pytest.raises(NotEnoughDataError, match="--folds 50"):
        grouped_folds(y, groups, 50, seed=0)
