"""Paired comparison of two runs (or two experiments of several seeds) on the same test images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import BadInputError
from .metrics import paired_bootstrap
from .runs import Run, find_runs, is_complete_run

COMPARE_METRICS = ("roc_auc", "average_precision", "pauc_80", "f1")


def load_side(path: str | Path) -> list[Run]:
    """A run folder, or a folder of runs (e.g. the seeds of one experiment)."""
    runs = find_runs(path) if not is_complete_run(path) else [Run.load(path)]
    if not runs:
        raise BadInputError(f"{path}: holds no complete run")
    return runs


def _test_predictions(runs: list[Run], label: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[float]]:
    ids, y, probs, thresholds = None, None, [], []
    for run in runs:
        p = run.predictions("test").sort_values("id").reset_index(drop=True)
        if ids is None:
            ids, y = p["id"].to_numpy(), p["label"].to_numpy()
        elif not np.array_equal(ids, p["id"].to_numpy()):
            raise BadInputError(f"{run.path}: its test images differ from {runs[0].path}'s ({label}); "
                                "runs can only be compared on the same test set")
        probs.append(p["prob"].to_numpy())
        thresholds.append(float(run.metrics["test"]["threshold"]))
    return ids, y, probs, thresholds


def compare_runs(runs_a: list[Run], runs_b: list[Run], metrics=COMPARE_METRICS, n_boot: int = 2000,
                 seed: int = 0) -> dict:
    ids_a, y, probs_a, thr_a = _test_predictions(runs_a, "A")
    ids_b, _, probs_b, thr_b = _test_predictions(runs_b, "B")
    if not np.array_equal(ids_a, ids_b):
        raise BadInputError(f"{runs_a[0].path} and {runs_b[0].path} were tested on different images "
                            "(different data sets or splits); a paired comparison needs the same test set")
    result = paired_bootstrap(y, probs_a, probs_b, thr_a, thr_b, metrics, n_boot, seed)
    return {"a": [str(r.path) for r in runs_a], "b": [str(r.path) for r in runs_b], "n_test": int(len(y)),
            "n_boot": n_boot, "metrics": result}


def verdict(d: dict) -> str:
    if d["lo"] > 0:
        return "B better: the interval lies above zero"
    if d["hi"] < 0:
        return "B worse: the interval lies below zero"
    return "no clear difference: the interval includes zero"


def format_comparison(res: dict, name_a: str = "A", name_b: str = "B") -> list[str]:
    seeds = f"{len(res['a'])} vs {len(res['b'])} run(s)"
    lines = [f"paired bootstrap on the same {res['n_test']} test images ({res['n_boot']} resamples; {seeds}, "
             f"seed-averaged where several): B - A, 95% interval", f"A = {name_a}", f"B = {name_b}",
             f"{'metric':<18} {'A':>7} {'B':>7} {'B - A':>8}  {'95% interval':<19} verdict"]
    for m, d in res["metrics"].items():
        lines.append(f"{m:<18} {d['a']:7.4f} {d['b']:7.4f} {d['diff']:+8.4f}  [{d['lo']:+.4f}, {d['hi']:+.4f}]  {verdict(d)}")
    return lines
