"""Paired comparison of two runs (or two experiments of several seeds) on the same test images, or
of two cross-validations on the same out-of-fold images (which needs the same fold assignment).
Where the images have groups (patient or lesion), whole groups are resampled."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..choices import COMPARE_ON
from ..errors import BadInputError, check_at_least
from ..metrics import ci_unit, paired_bootstrap
from ..runs import Run, find_runs, is_complete_run, oof_arrays
from ..runs.kinds import kind_names, run_kind, scoring_kind_names
from ..runs.records import Comparison

COMPARE_METRICS = ("roc_auc", "average_precision", "pauc_80", "f1")


def oof_kinds() -> tuple[str, ...]:
    """The kinds with out-of-fold predictions of the whole train pool: two of them are paired on those images."""
    return tuple(n for n in kind_names() if run_kind(n).has_oof)


def load_side(path: str | Path) -> list[Run]:
    """A run folder of a kind that scores (train, cv, ensemble, tabular), or a folder of runs (e.g. the seeds of
    one experiment)."""
    runs = find_runs(path, scoring_kind_names()) if not is_complete_run(path) else [Run.load(path)]
    if not runs:
        raise BadInputError(f"{path}: holds no complete run")
    return runs


def _test_predictions(runs: list[Run], label: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[float],
                                                             np.ndarray | None]:
    ids, y, probs, thresholds, groups = None, None, [], [], None
    for run in runs:
        p = run.predictions("test").sort_values("id").reset_index(drop=True)
        if ids is None:
            ids, y = p["id"].to_numpy(), p["label"].to_numpy()
            groups = p["group"].astype(str).to_numpy() if "group" in p else None
        elif not np.array_equal(ids, p["id"].to_numpy()):
            raise BadInputError(f"{run.path}: its test images differ from {runs[0].path}'s ({label}); "
                                "runs can only be compared on the same test set")
        probs.append(p["prob"].to_numpy())
        thresholds.append(float(run.metrics["test"]["threshold"]))
    if ids is None or y is None:
        raise BadInputError(f"{label}: no runs to compare")
    return ids, y, probs, thresholds, groups


def _unit(runs: list[Run], groups: np.ndarray | None) -> str:
    rule = runs[0].group_rule
    return ci_unit(rule) if groups is not None and rule else "image"


def _fold_rows(run: Run, folds: tuple[int, ...]):
    """The run's out-of-fold rows of these folds only. A fold of a repeated cv holds other images in each repeat,
    so only a cv of one repeat is split this way."""
    table = run.oof()
    if table["repeat"].nunique() > 1:
        raise BadInputError(f"--folds: {run.path} is a cv of {table['repeat'].nunique()} repeats, whose folds hold "
                            "other images in each repeat; compare its whole out-of-fold set instead")
    have = sorted(int(f) for f in table["fold"].unique())
    unknown = sorted(set(folds) - set(have))
    if unknown:
        raise BadInputError(f"--folds {','.join(map(str, folds))}: {run.path} has no fold "
                            f"{', '.join(map(str, unknown))} (its folds: {', '.join(map(str, have))})")
    return table[table["fold"].isin(folds)]


def _oof_predictions(runs: list[Run], label: str, folds: tuple[int, ...] | None = None, per_fold: bool = False):
    """Every cv's out-of-fold predictions, aligned by id: one entry per (cv, repeat); with `folds`, only the images
    of those folds; with `per_fold`, also each image's fold (one assignment on every side: compare_cv checks it),
    where a cv of several repeats, whose folds hold other images in each repeat, is refused."""
    ids = y = groups = strata = None
    probs, thresholds = [], []
    for run in runs:
        table = run.oof() if folds is None else _fold_rows(run, folds)
        if per_fold and table["repeat"].nunique() > 1:
            raise BadInputError(f"--per-fold: {run.path} is a cv of {table['repeat'].nunique()} repeats, whose folds "
                                "hold other images in each repeat; pair its whole out-of-fold set instead")
        i, yy, g, p, t = oof_arrays(table)
        if ids is None:
            ids, y, groups = i, yy, g
            if per_fold:
                strata = table.set_index("id")["fold"].reindex(ids).to_numpy()
        elif not np.array_equal(ids, i):  # compare_cv has already refused different fold assignments
            raise BadInputError(f"{run.path} and {runs[0].path} ({label}) were cross-validated on different folds; "
                                "their out-of-fold predictions cannot be paired")
        probs += p
        thresholds += t
    return ids, y, groups, probs, thresholds, strata


def compare_runs(runs_a: list[Run], runs_b: list[Run], metrics=COMPARE_METRICS, n_boot: int = 2000,
                 seed: int = 0, on: str = "auto", folds: tuple[int, ...] | None = None,
                 per_fold: bool = False) -> Comparison:
    """B - A on the out-of-fold images or on the test images. 'auto': out-of-fold when both sides have them
    (cv and tabular runs), else test. Out-of-fold pairs need the same fold assignment on both sides; `folds`
    restricts them to the images of those folds (each scored by its own fold's models on both sides).

    `per_fold`: each side's metric is the mean over folds of the metric on the fold's own images. Pooled, the
    out-of-fold images of all folds are ranked together, though each fold's models scored their own, so a pooled
    ROC AUC also counts how alike the fold models' scores run (their calibration), not only how each ranks; the
    test set is ranked by one fold ensemble, where that does not arise (Forman and Scholz, SIGKDD Explorations
    2010, average the folds' AUCs for this reason)."""
    if on not in COMPARE_ON:
        raise BadInputError(f"--on must be one of {', '.join(COMPARE_ON)}, got '{on}'")
    check_at_least(n_boot, 1, "--n-boot")
    has_oof = all(r.declared.has_oof for r in runs_a + runs_b)
    if (on == "oof" or folds is not None or per_fold) and not has_oof:
        raise BadInputError(f"--on {on}" + (f" --folds {','.join(map(str, folds))}" if folds is not None else "")
                            + (" --per-fold" if per_fold else "")
                            + ": " + ", ".join(f"{r.path} is a {r.kind} run" for r in runs_a + runs_b
                                               if not r.declared.has_oof)
                            + f" without out-of-fold predictions (only {' and '.join(oof_kinds())} runs have them)")
    if (folds is not None or per_fold) and on == "test":
        raise BadInputError(("--folds pairs out-of-fold images of some folds" if folds is not None else
                             "--per-fold pairs out-of-fold images fold by fold")
                            + "; --on test pairs the test images, which every fold model scores")
    if on != "test" and has_oof:
        return compare_cv(runs_a, runs_b, metrics, n_boot, seed, folds, per_fold)
    ids_a, y, probs_a, thr_a, groups = _test_predictions(runs_a, "A")
    ids_b, _, probs_b, thr_b, groups_b = _test_predictions(runs_b, "B")
    if not np.array_equal(ids_a, ids_b):
        raise BadInputError(f"{runs_a[0].path} and {runs_b[0].path} were tested on different images "
                            "(different data sets or splits); a paired comparison needs the same test set")
    if groups_b is None:
        groups = None  # resample whole groups only where both sides know them
    return _paired(runs_a, runs_b, "test", y, groups, probs_a, probs_b, thr_a, thr_b, metrics, n_boot, seed)


def _audits(runs_a: list[Run], runs_b: list[Run], n_boot: int, seed: int) -> dict:
    """Each side's shortcut audit of the test set (metrics.json's audit block), and, for one run a side whose
    per-image audit tables hold the same images, B - A paired on them."""
    from ..audit.paired import audit_table, paired_audit
    from ..audit.summary import side

    out: dict[str, Any] = {"a": side(runs_a), "b": side(runs_b)}
    if len(runs_a) == len(runs_b) == 1:
        ta, tb = audit_table(runs_a[0]), audit_table(runs_b[0])
        if ta is not None and tb is not None:
            out["paired"] = paired_audit(ta, tb, n_boot, seed)
    return out


def compare_cv(runs_a: list[Run], runs_b: list[Run], metrics=COMPARE_METRICS, n_boot: int = 2000, seed: int = 0,
               folds: tuple[int, ...] | None = None, per_fold: bool = False) -> Comparison:
    """Paired on the same out-of-fold images (those of `folds` only, if given), pooled or fold by fold (compare_runs);
    refused unless every run has the same fold assignment."""
    hashes = {r.fold_sha256 for r in runs_a + runs_b}
    if len(hashes) > 1:
        detail = ", ".join(f"{r.path} ({r.kind}, fold hash {str(r.fold_sha256)[:12]})" for r in runs_a + runs_b)
        raise BadInputError("the runs were cross-validated on different folds, so their out-of-fold predictions "
                            f"cannot be paired: {detail}; run cv with the same --folds, --repeats and fold seed on "
                            "the same split (a tabular run takes a cv's folds with --image CV_DIR), or pair them on "
                            "the test images with --on test")
    ids_a, y, groups, probs_a, thr_a, strata = _oof_predictions(runs_a, "A", folds, per_fold)
    ids_b, _, _, probs_b, thr_b, _ = _oof_predictions(runs_b, "B", folds, per_fold)
    if not np.array_equal(ids_a, ids_b):
        raise BadInputError(f"{runs_a[0].path} and {runs_b[0].path}: different out-of-fold images")
    return _paired(runs_a, runs_b, "oof", y, groups, probs_a, probs_b, thr_a, thr_b, metrics, n_boot, seed, folds,
                   strata)


def _paired(runs_a: list[Run], runs_b: list[Run], on: str, y, groups, probs_a, probs_b, thr_a, thr_b, metrics,
            n_boot: int, seed: int, folds: tuple[int, ...] | None = None, strata: np.ndarray | None = None) -> Comparison:
    """The paired bootstrap of B - A on aligned predictions, over whole groups where the runs know them; with
    `strata` (each image's fold), the mean of the folds' values."""
    unit = _unit(runs_a, groups)
    result = paired_bootstrap(y, probs_a, probs_b, thr_a, thr_b, metrics, n_boot, seed,
                              groups=groups if unit != "image" else None, strata=strata)
    return {"a": [str(r.path) for r in runs_a], "b": [str(r.path) for r in runs_b], "on": on, "n_test": int(len(y)),
            "n_boot": n_boot, "unit": unit, "metrics": result, "audit": _audits(runs_a, runs_b, n_boot, seed),
            "folds": list(folds) if folds is not None else None,
            "per_fold": sorted(int(f) for f in np.unique(strata)) if strata is not None else None}


def verdict(d: dict) -> str:
    if d["lo"] > 0:
        return "B better: the interval lies above zero"
    if d["hi"] < 0:
        return "B worse: the interval lies below zero"
    return "no clear difference: the interval includes zero"


def difference_cell(d: dict, digits: int = 3) -> str:
    """'+0.012 [-0.004, +0.031]' with ↑ or ↓ where the interval lies above or below zero: a table cell for B - A."""
    mark = " ↑" if d["lo"] > 0 else (" ↓" if d["hi"] < 0 else "")
    return f"{d['diff']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]{mark}"


def format_comparison(res: Comparison, name_a: str = "A", name_b: str = "B") -> list[str]:
    seeds = f"{len(res['a'])} vs {len(res['b'])} run(s)"
    where = "out-of-fold" if res.get("on") == "oof" else "test"
    folds = res.get("folds")
    if folds is not None:
        where += f" (folds {', '.join(map(str, folds))})"
    per_fold = res.get("per_fold")
    if per_fold:
        where += f", each side's metric the mean over folds {', '.join(map(str, per_fold))} of its value on the fold's images,"
    unit = res.get("unit", "image")
    resampled = "images" if unit == "image" else f"whole groups ({unit})"
    lines = [f"paired bootstrap on the same {res['n_test']} {where} images ({res['n_boot']} resamples of {resampled}; "
             f"{seeds}, averaged where several): B - A, 95% interval", f"A = {name_a}", f"B = {name_b}",
             f"{'metric':<18} {'A':>7} {'B':>7} {'B - A':>8}  {'95% interval':<19} verdict"]
    for m, d in res["metrics"].items():
        lines.append(f"{m:<18} {d['a']:7.4f} {d['b']:7.4f} {d['diff']:+8.4f}  [{d['lo']:+.4f}, {d['hi']:+.4f}]  {verdict(d)}")
    if res.get("audit"):
        from ..audit.summary import paired_text, side_text

        lines += ["shortcut audit of the test set (lesionlab audit; CAM mass over the images each run flags, ROC AUC "
                  "drop when the outer frame is painted in skin colour; each run's own interval, not paired):",
                  f"A: {side_text(res['audit']['a'])}", f"B: {side_text(res['audit']['b'])}"]
        if res["audit"].get("paired"):
            lines.append("B - A, paired on the same test images: " + paired_text(res["audit"]["paired"]))
    return lines
