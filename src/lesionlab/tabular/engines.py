"""Gradient-boosted trees behind one interface: LightGBM (the default dependency), XGBoost and
CatBoost (optional extras). Each takes the feature frame as is: numeric columns as floats with
missing values, categorical columns as pandas categoricals handled by the engine's own
categorical support (no one-hot here).

An offset (a log-odds per row, e.g. the image model's logit) is where each row's boosting
starts: LightGBM's init_score, XGBoost's base_margin, CatBoost's baseline. The trees then learn
only what the features add to it, and a model that keeps no useful tree scores rows in the
offset's order. Its predictions need the same rows' offset again."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..choices import ENGINES
from ..errors import BadInputError


@dataclass
class Params:
    learning_rate: float = 0.05
    max_rounds: int = 2000
    early_stopping: int = 100
    num_leaves: int = 31       # LightGBM; depth 6 for XGBoost and CatBoost
    min_child_samples: int = 20  # LightGBM; XGBoost's min_child_weight from it; CatBoost's symmetric trees have none
    subsample: float = 0.8
    colsample: float = 0.8
    l2: float = 1.0
    threads: int = 1


class Engine:
    name = ""
    suffix = ""
    package = ""

    def fit(self, X: pd.DataFrame, y: np.ndarray, X_valid: pd.DataFrame, y_valid: np.ndarray, params: Params,
            seed: int, offset: np.ndarray | None = None, offset_valid: np.ndarray | None = None) -> Any:
        raise NotImplementedError  # pragma: no cover

    def predict(self, model: Any, X: pd.DataFrame, offset: np.ndarray | None = None) -> np.ndarray:
        """Probabilities; a model fitted with an offset needs the rows' offset."""
        raise NotImplementedError  # pragma: no cover

    def importance(self, model: Any, columns: list[str]) -> np.ndarray:
        """Total gain per column, in `columns` order."""
        raise NotImplementedError  # pragma: no cover

    def best_iteration(self, model: Any) -> int:
        raise NotImplementedError  # pragma: no cover

    def save(self, model: Any, path: Path) -> None:
        raise NotImplementedError  # pragma: no cover

    def load(self, path: Path) -> Any:
        raise NotImplementedError  # pragma: no cover

    def check_file(self, path: Path) -> str | None:
        """What is wrong with a saved model file, seen without the engine reading it (a damaged file can
        crash an engine's reader outright), or None."""
        return None

    def version(self) -> str:
        return importlib.import_module(self.package).__version__


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y)) < len(y)


def _sigmoid(margin: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(margin, dtype=np.float64)))


class LightGBMEngine(Engine):
    name, suffix, package = "lightgbm", ".txt", "lightgbm"

    def fit(self, X, y, X_valid, y_valid, params, seed, offset=None, offset_valid=None):
        import lightgbm as lgb

        p = {"objective": "binary", "learning_rate": params.learning_rate, "num_leaves": params.num_leaves,
             "min_child_samples": params.min_child_samples, "feature_fraction": params.colsample,
             "bagging_fraction": params.subsample, "bagging_freq": 1, "lambda_l2": params.l2, "seed": seed,
             "deterministic": True, "force_row_wise": True, "num_threads": params.threads, "verbose": -1,
             # AUC picks the round where validation has both classes; log loss otherwise
             "metric": "auc" if _both_classes(y_valid) else "binary_logloss"}
        train = lgb.Dataset(X, y, categorical_feature="auto", free_raw_data=True, init_score=offset)
        valid = lgb.Dataset(X_valid, y_valid, reference=train, init_score=offset_valid)
        return lgb.train(p, train, params.max_rounds, valid_sets=[valid],
                         callbacks=[lgb.early_stopping(params.early_stopping, first_metric_only=True, verbose=False)])

    def predict(self, model, X, offset=None):
        if offset is None:
            return np.asarray(model.predict(X, num_iteration=model.best_iteration or None), dtype=np.float64)
        return _sigmoid(model.predict(X, raw_score=True, num_iteration=model.best_iteration or None) + offset)

    def importance(self, model, columns):
        gain = dict(zip(model.feature_name(), model.feature_importance("gain", iteration=model.best_iteration or None)))
        return np.array([gain.get(c, 0.0) for c in columns], dtype=np.float64)

    def best_iteration(self, model):
        return int(model.best_iteration or model.current_iteration())

    def save(self, model, path):
        model.save_model(str(path), num_iteration=model.best_iteration or None)

    def check_file(self, path):
        # LightGBM's text format: "tree" first, the parameters block, then one pandas_categorical line. Its
        # reader trusts the tree sizes the header gives: a file cut short crashes it (a segmentation fault)
        with open(path, "rb") as f:
            data = f.read()
        lines = data.rstrip(b"\n").rsplit(b"\n", 1)
        if not data.startswith(b"tree\n") or b"\nend of parameters\n" not in data or not lines[-1].startswith(
                b"pandas_categorical:"):
            return "not a whole LightGBM model file (cut short or overwritten)"
        return None

    def load(self, path):
        import lightgbm as lgb

        booster = lgb.Booster(model_file=str(path))
        booster.best_iteration = 0  # saved with the best iteration's trees only
        return booster


class XGBoostEngine(Engine):
    name, suffix, package = "xgboost", ".json", "xgboost"

    def fit(self, X, y, X_valid, y_valid, params, seed, offset=None, offset_valid=None):
        import xgboost as xgb

        # min_child_weight is a sum of hessians p(1 - p): 0.05 a row maps the default 20 rows to XGBoost's default 1
        p = {"objective": "binary:logistic", "eta": params.learning_rate, "max_depth": 6,
             "min_child_weight": 0.05 * params.min_child_samples, "subsample": params.subsample,
             "colsample_bytree": params.colsample,
             "lambda": params.l2, "tree_method": "hist", "seed": seed, "nthread": params.threads,
             "eval_metric": "auc" if _both_classes(y_valid) else "logloss", "max_cat_to_onehot": 1}
        dtrain = xgb.DMatrix(X, y, enable_categorical=True, base_margin=offset)
        dvalid = xgb.DMatrix(X_valid, y_valid, enable_categorical=True, base_margin=offset_valid)
        return xgb.train(p, dtrain, params.max_rounds, evals=[(dvalid, "valid")],
                         early_stopping_rounds=params.early_stopping, verbose_eval=False)

    def predict(self, model, X, offset=None):
        import xgboost as xgb

        best = getattr(model, "best_iteration", None)
        rng = (0, best + 1) if best is not None else (0, 0)
        # with a base margin XGBoost leaves out its own base_score, as at training: the offset goes in the matrix
        data = xgb.DMatrix(X, enable_categorical=True, base_margin=offset)
        return np.asarray(model.predict(data, iteration_range=rng), np.float64)

    def importance(self, model, columns):
        gain = model.get_score(importance_type="total_gain")
        return np.array([gain.get(c, 0.0) for c in columns], dtype=np.float64)

    def best_iteration(self, model):
        return int(getattr(model, "best_iteration", model.num_boosted_rounds() - 1)) + 1

    def save(self, model, path):
        best = getattr(model, "best_iteration", None)
        (model[: best + 1] if best is not None else model).save_model(str(path))

    def check_file(self, path):
        import json

        try:
            with open(path, encoding="utf-8") as f:
                json.load(f)
        except (ValueError, UnicodeDecodeError):
            return "not a whole XGBoost model file (not valid JSON: cut short or overwritten)"
        return None

    def load(self, path):
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(path))
        return booster


class CatBoostEngine(Engine):
    name, suffix, package = "catboost", ".cbm", "catboost"

    @staticmethod
    def _frame(X: pd.DataFrame) -> pd.DataFrame:
        # CatBoost wants categorical values as text; missing is one more category
        cats = [c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)]
        return X.assign(**{c: X[c].astype(object).where(X[c].notna(), "<missing>").astype(str) for c in cats})

    def fit(self, X, y, X_valid, y_valid, params, seed, offset=None, offset_valid=None):
        from catboost import CatBoostClassifier, Pool

        cats = [c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)]
        model = CatBoostClassifier(iterations=params.max_rounds, learning_rate=params.learning_rate, depth=6,
                                   l2_leaf_reg=params.l2, random_seed=seed, thread_count=params.threads,
                                   eval_metric="AUC" if _both_classes(y_valid) else "Logloss",
                                   od_type="Iter", od_wait=params.early_stopping, use_best_model=True,
                                   allow_writing_files=False, verbose=False)
        model.fit(Pool(self._frame(X), y, cat_features=cats, baseline=offset),
                  eval_set=Pool(self._frame(X_valid), y_valid, cat_features=cats, baseline=offset_valid))
        return model

    def predict(self, model, X, offset=None):
        if offset is None:
            return np.asarray(model.predict_proba(self._frame(X))[:, 1], dtype=np.float64)
        # the trees' raw value (with the model's own scale and bias) on top of the rows' baseline
        return _sigmoid(model.predict(self._frame(X), prediction_type="RawFormulaVal") + offset)

    def importance(self, model, columns):
        imp = dict(zip(model.feature_names_, model.get_feature_importance()))
        return np.array([imp.get(c, 0.0) for c in columns], dtype=np.float64)

    def best_iteration(self, model):
        return int(model.get_best_iteration() or 0) + 1

    def save(self, model, path):
        model.save_model(str(path))

    def load(self, path):
        from catboost import CatBoostClassifier

        model = CatBoostClassifier()
        model.load_model(str(path))
        return model


_ENGINES = {"lightgbm": LightGBMEngine, "xgboost": XGBoostEngine, "catboost": CatBoostEngine}
assert tuple(_ENGINES) == ENGINES


def get_engine(name: str) -> Engine:
    if name not in _ENGINES:
        raise BadInputError(f"--engine must be one of {', '.join(ENGINES)}, got '{name}'")
    engine = _ENGINES[name]()
    try:
        importlib.import_module(engine.package)
    except ImportError:
        raise BadInputError(f"--engine {name}: the package '{engine.package}' is not installed; it is an optional "
                            f"extra: pip install {engine.package} (or use --engine lightgbm)") from None
    return engine
