"""Training the tabular model: K grouped stratified folds over the train pool, each fold model
early-stopped on an inner grouped validation part of its own training rows, optionally on a
negative-undersampled draw; out-of-fold probabilities for the train pool, and the fold models'
average for everything else."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ..data.folds import make_folds
from ..errors import NotEnoughDataError
from .engines import Engine, Params

log = logging.getLogger(__name__)

INNER_SPLITS = 5  # the inner validation part is one fifth of a fold's training groups


def grouped_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) of every row: the assignment `lesionlab cv` makes (data.folds), so a
    metadata-only run and a cv of the same fold seed hold out the same groups."""
    rows = np.arange(len(y))
    return make_folds(rows, y, groups, rows, k, seed=seed).assign[0]


def inner_split(y: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, early-stopping rows) of a fold's training part, by whole groups."""
    n_groups = len(pd.unique(groups))
    splits = min(INNER_SPLITS, n_groups)
    if splits < 2:
        raise NotEnoughDataError("a fold's training part has fewer than 2 groups; too little data for early stopping")
    splitter = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
    fit, stop = next(splitter.split(np.zeros(len(y)), y, groups))
    return fit, stop


def undersample(y: np.ndarray, neg_ratio: float | None, rng: np.random.Generator) -> np.ndarray:
    """Positions to train on: every malignant row and at most neg_ratio benign rows per malignant one."""
    if not neg_ratio:
        return np.arange(len(y))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    keep = min(len(neg), int(round(neg_ratio * len(pos))))
    return np.sort(np.r_[pos, rng.choice(neg, size=keep, replace=False)])


def _of(offset: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if offset is None else offset[rows]


@dataclass
class FoldResult:
    models: list[Any]
    oof: np.ndarray                 # out-of-fold probability of every training row
    best_iterations: list[int]
    importance: np.ndarray          # (folds, features) total gain
    rows_trained: list[dict]        # per fold: malignant / benign rows fitted, early-stopping rows
    seconds: float


def fit_folds(X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, folds: np.ndarray, engine: Engine, params: Params,
              neg_ratio: float | None, seed: int, on_fold: Callable[[int, int, dict], None] | None = None,
              offset: np.ndarray | None = None) -> FoldResult:
    """K fold models; with `offset` (a log-odds per row: engines.py) each starts from its rows' offset."""
    started = time.perf_counter()
    y = np.asarray(y).astype(np.int64)
    k = int(folds.max()) + 1
    oof = np.full(len(y), np.nan)
    models, best, importance, trained = [], [], [], []
    for f in range(k):
        held = np.flatnonzero(folds == f)
        rest = np.flatnonzero(folds != f)
        fit_rel, stop_rel = inner_split(y[rest], groups[rest], seed + f)
        fit_rows, stop_rows = rest[fit_rel], rest[stop_rel]
        rng = np.random.default_rng([seed, f])
        fit_rows = fit_rows[undersample(y[fit_rows], neg_ratio, rng)]
        if y[fit_rows].sum() == 0:
            raise NotEnoughDataError(f"fold {f}: its training part has no malignant image left after the inner "
                                     "validation part was set aside; use fewer --folds")
        model = engine.fit(X.iloc[fit_rows], y[fit_rows], X.iloc[stop_rows], y[stop_rows], params, seed + f,
                           _of(offset, fit_rows), _of(offset, stop_rows))
        oof[held] = engine.predict(model, X.iloc[held], _of(offset, held))
        models.append(model)
        best.append(engine.best_iteration(model))
        importance.append(engine.importance(model, list(X.columns)))
        info = {"fold": f, "fit_malignant": int(y[fit_rows].sum()), "fit_benign": int((y[fit_rows] == 0).sum()),
                "stop_rows": int(len(stop_rows)), "held_rows": int(len(held)), "best_iteration": best[-1]}
        trained.append(info)
        log.info("fold %d: %s", f, info)
        if on_fold:
            on_fold(f, k, info)
    return FoldResult(models, oof, best, np.array(importance), trained, time.perf_counter() - started)


def predict_average(engine: Engine, models: list[Any], X: pd.DataFrame, offset: np.ndarray | None = None) -> np.ndarray:
    """The fold models' mean probability (each from the rows' offset, for models fitted with one)."""
    if len(X) == 0:
        return np.zeros(0)
    return np.mean([engine.predict(m, X, offset) for m in models], axis=0)
