"""LightGBM, XGBoost and CatBoost behind one interface (tabular/engines.py)."""
import numpy as np
import pandas as pd
import pytest

from lesionlab.errors import BadInputError


def _engine_data(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    X = pd.DataFrame({"x": y * 1.5 + rng.normal(size=n),
                      "c": pd.Categorical(np.where(y == 1, rng.choice(["a", "b"], n), rng.choice(["b", "c"], n)),
                                          categories=["a", "b", "c"])})
    X.loc[::7, "x"] = np.nan
    return X, y


@pytest.mark.parametrize("name", ["lightgbm", "xgboost", "catboost"])
def test_every_engine_fits_with_native_categoricals_and_reloads_identically(name, tmp_path):
    pytest.importorskip(name, reason=f"{name} is not installed (an optional extra)")
    from lesionlab.tabular.engines import Params, get_engine

    engine = get_engine(name)
    X, y = _engine_data()
    params = Params(max_rounds=60, early_stopping=10, min_child_samples=5)
    model = engine.fit(X.iloc[:200], y[:200], X.iloc[200:], y[200:], params, seed=0)
    p = engine.predict(model, X.iloc[200:])
    assert p.shape == (100,) and ((p >= 0) & (p <= 1)).all()
    from lesionlab.metrics import roc_auc

    assert roc_auc(y[200:], p) > 0.7
    engine.save(model, tmp_path / f"m{engine.suffix}")
    again = engine.load(tmp_path / f"m{engine.suffix}")
    assert np.abs(engine.predict(again, X.iloc[200:]) - p).max() < 1e-6
    assert engine.importance(model, list(X.columns)).shape == (2,)


def test_a_missing_optional_engine_is_named(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **kw):
        if name == "catboost":
            raise ImportError("no catboost")
        return real(name, *a, **kw)

    monkeypatch.setattr("importlib.import_module", fake)
    from lesionlab.tabular.engines import get_engine

    with pytest.raises(BadInputError, match="'catboost' is not installed.*pip install catboost"):
        get_engine("catboost")


@pytest.mark.parametrize("name", ["lightgbm", "xgboost", "catboost"])
def test_every_engine_starts_from_the_offset_and_keeps_its_order_where_the_features_add_nothing(name, tmp_path):
    pytest.importorskip(name, reason=f"{name} is not installed (an optional extra)")
    from lesionlab.metrics import roc_auc
    from lesionlab.tabular.engines import Params, get_engine

    engine = get_engine(name)
    rng = np.random.default_rng(1)
    n = 400
    offset = rng.normal(scale=2.0, size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(offset - 2.0)))).astype(int)
    params = Params(max_rounds=60, early_stopping=10, min_child_samples=5)
    # features that hold nothing: one value on every scored row (and one other training row, since CatBoost refuses a
    # constant column), so each tree puts all scored rows in one leaf and they keep the offset's order
    flat = pd.DataFrame({"x": np.r_[0.0, np.ones(n - 1)]})
    model = engine.fit(flat.iloc[:300], y[:300], flat.iloc[300:], y[300:], params, 0, offset[:300], offset[300:])
    p = engine.predict(model, flat.iloc[300:], offset[300:])
    assert ((p > 0) & (p < 1)).all()
    assert (np.argsort(p, kind="stable") == np.argsort(offset[300:], kind="stable")).all()
    # each row's log-odds is its offset plus one shift the trees learnt, small since boosting started at the offset
    # (not at the class prior's log-odds, about -1.3 here, where it starts without one)
    shift = np.log(p / (1 - p)) - offset[300:]
    assert np.ptp(shift) < 1e-4 and abs(shift[0]) < 0.5
    assert roc_auc(y[300:], p) == roc_auc(y[300:], offset[300:]) > 0.75
    # features that do carry signal on top of the offset: the fused model uses both, and reloads identically
    X = pd.DataFrame({"x": y * 2.0 + rng.normal(size=n)})
    model = engine.fit(X.iloc[:300], y[:300], X.iloc[300:], y[300:], params, 0, offset[:300], offset[300:])
    p = engine.predict(model, X.iloc[300:], offset[300:])
    assert roc_auc(y[300:], p) > roc_auc(y[300:], offset[300:])
    engine.save(model, tmp_path / f"m{engine.suffix}")
    again = engine.load(tmp_path / f"m{engine.suffix}")
    assert np.abs(engine.predict(again, X.iloc[300:], offset[300:]) - p).max() < 1e-6
