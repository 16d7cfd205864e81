"""`lesionlab cv`: grouped, stratified K-fold cross-validation of one config over a split's train
pool, with out-of-fold (OOF) predictions for every pool image and the fold ensemble scored on the
split's untouched validation and test sets.

    CV_DIR/
      cv_plan.json, folds.csv   written first: the config and the fold assignment (by hash) that a
                                resumed cv must match; cv_config.yaml: the resolved config (workers read it)
      folds/K/                  one complete train run per fold (folds/rR-K/ with several repeats)
      oof.csv                   id, group, fold, repeat, label, prob, threshold for every pool image
      cv.json                   OOF metrics with 95% intervals, per repeat and per fold; the fold ensemble's
      predictions.csv           the fold ensemble on the split's val and test (id, split, label, prob, group)
      config.yaml, run.json, metrics.json ({"oof", "val", "test"}), figures/   (metrics.json last)

Each fold trains as `train` does with the same config, on the other folds only: the training draw
and an inner validation part (checkpoint, early stop, threshold) both come from them. The inner
part is drawn as `split` draws its validation set, in whole groups with the split's validation
counts, so a fold chooses its checkpoint and threshold on a set like the one `train` uses.
Synthetic images join each fold's training draw only; `{fold}` in synthetic.data gives each fold its
own set (fold_config).
Folds are trained through the sweep's machinery: finished folds are skipped, an interrupted one
restarts from scratch, and several workers or job-array tasks can share one CV_DIR.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .. import plots
from ..config import ExperimentConfig, to_dict
from ..data.folds import Folds, inner_validation, make_folds
from ..data.splits import load_split, parse_counts
from ..data.store import Store
from ..errors import BadInputError, ExistsError, LesionLabError, check_at_least
from ..fileio import held_lock, read_json, write_csv, write_json, write_yaml
from ..metrics import ThresholdRule, ci_unit, metrics_with_ci, parse_prevalence
from ..runs import Run, RunWriter, is_complete_run, load_run, oof_arrays
from ..runs import format as fmt
from ..runs.predictor import average_probabilities
from ..runs.records import CvResult, RunInfo
from .sweep import SweepRun, run_sweep, spawn_local_workers
from .train import FoldPlan, check_input_size, train

log = logging.getLogger(__name__)

INNER_RULE = ("whole groups drawn from the other folds with the split's validation counts (groups with a malignant "
              "image first, as `split` draws), seeded by (fold seed, repeat, fold); the training draw comes from the rest "
              "of the other folds; images of a chosen group beyond the counts are set aside")
CV_CONFIG = "cv_config.yaml"
# keys that may differ when a cv resumes: where the data set lies, and the name (it defaults to the folder's)
_RESUME_FREE = ("data", "name")


def fold_name(repeat: int, fold: int, repeats: int) -> str:
    return str(fold) if repeats == 1 else f"r{repeat}-{fold}"


@dataclass
class CvPlan:
    out: Path
    cfg: ExperimentConfig
    folds: Folds
    doc: dict
    plans: dict[Path, FoldPlan]  # fold folder -> its positions


def _comparable(doc: dict) -> dict:
    out = {k: v for k, v in doc.items() if k not in ("config", "created")}
    # a key added to the config after the cv was started (e.g. calibrate) counts as its default, as in sweep
    config = {**to_dict(ExperimentConfig()), **doc["config"]}
    out["config"] = {k: v for k, v in config.items() if k not in _RESUME_FREE}
    return out


def _check_or_write_plan(out: Path, doc: dict, cfg: ExperimentConfig, folds: Folds) -> dict:
    """A new CV_DIR gets the plan; an existing one must hold the same plan (then it resumes)."""
    plan_path = out / fmt.CV_PLAN
    if is_complete_run(out) and load_run(out).kind != "cv":
        raise ExistsError(f"{out}: holds a {load_run(out).kind} run, not a cross-validation; choose another --out")
    if plan_path.exists():
        saved = read_json(plan_path)
        a, b = _comparable(saved), _comparable(doc)
        if a != b:
            diff = sorted({k for k in set(a["config"]) | set(b["config"]) if a["config"].get(k) != b["config"].get(k)}
                          | {k for k in set(a) - {"config"} | set(b) - {"config"} if a.get(k) != b.get(k)})
            raise ExistsError(f"{out}: holds a cross-validation of another config or fold assignment (differs in: "
                              f"{', '.join(diff)}); give the same config to resume it, or choose another --out")
        doc = saved
    else:
        ours = {fmt.CV_PLAN, fmt.FOLDS_TABLE, CV_CONFIG}  # another task of a job array may be writing them now
        if out.exists() and (not out.is_dir() or any(not p.name.startswith(".") and p.name not in ours
                                                      for p in out.iterdir())):
            raise ExistsError(f"{out}: exists and is not a cross-validation folder; choose a new or empty folder for --out")
        out.mkdir(parents=True, exist_ok=True)
        write_json(plan_path, doc)  # first: job-array tasks starting together then find the same plan
    if not (out / fmt.FOLDS_TABLE).exists():
        write_csv(out / fmt.FOLDS_TABLE, folds.table())
    if not (out / CV_CONFIG).exists():
        write_yaml(out / CV_CONFIG, to_dict(cfg))
    return doc


def prepare_cv(cfg: ExperimentConfig, out: str | os.PathLike, k: int = 5, repeats: int = 1,
               fold_seed: int | None = None) -> CvPlan:
    """Assign the folds, check or write the plan, and lay out every fold's positions."""
    if not cfg.data:
        raise BadInputError("no data set given: pass --data DATA_DIR or set 'data' in the config")
    out = Path(out)
    fold_seed = cfg.seed if fold_seed is None else fold_seed
    store = Store.open(cfg.data)
    check_input_size(cfg, store.size)  # once here, not in every fold
    split = load_split(store, cfg.split)
    table = store.table
    rule = split.group_rule
    keys = split.group_keys(table)
    labels = table["label"].to_numpy()
    ids = table["id"].astype(str).to_numpy()
    folds = make_folds(ids, labels, keys, split.positions(table, "train"), k, repeats, fold_seed, rule)
    saved_name = None
    if (out / fmt.CV_PLAN).exists():
        saved_name = read_json(out / fmt.CV_PLAN).get("config", {}).get("name")
    cfg = cfg.model_copy(update={"name": saved_name or cfg.name or out.name})
    val_counts = parse_counts(split.params["val"], "val")
    doc = {"config": to_dict(cfg), "folds": k, "repeats": repeats, "fold_seed": fold_seed, "fold_sha256": folds.sha256,
           "split_file": split.path.name, "split_sha256": split.sha256, "store_hash": store.content_hash,
           "group_rule": rule, "inner_validation": {"rule": INNER_RULE, "counts": split.params["val"]}}
    doc = _check_or_write_plan(out, doc, cfg, folds)
    sides = {"split_val": split.positions(table, "val"), "test": split.positions(table, "test")}
    plans: dict[Path, FoldPlan] = {}
    for r in range(repeats):
        for f in range(k):
            others = folds.others(r, f)
            val, aside = inner_validation(labels, keys, others, val_counts, [fold_seed, r, f],
                                          f"the folds other than {f}" + (f" (repeat {r})" if repeats > 1 else ""))
            pool = np.setdiff1d(others, np.r_[val, aside])
            held = folds.held_out(r, f)
            info = {"cv": str(out.resolve()), "repeat": r, "fold": f, "folds": k, "repeats": repeats,
                    "fold_seed": fold_seed, "fold_sha256": folds.sha256, "inner_validation": INNER_RULE,
                    "counts": {name: {"malignant": int(labels[p].sum()), "benign": int((labels[p] == 0).sum())}
                               for name, p in (("held_out", held), ("inner_val", val), ("set_aside", aside),
                                               ("train_pool", pool))}}
            plans[out / fmt.FOLDS_DIR / fold_name(r, f, repeats)] = FoldPlan(pool, val, {"oof": held, **sides}, info)
    return CvPlan(out, cfg, folds, doc, plans)


def fold_config(cfg: ExperimentConfig, plan: FoldPlan) -> ExperimentConfig:
    """The config a fold trains with: `{fold}` in synthetic.data names that fold's own synthetic images
    (made without its held-out images, e.g. by a generator trained on the fold's training part only:
    one trained on the whole pool has seen every held-out image)."""
    if not (cfg.synthetic and "{fold}" in cfg.synthetic.data):
        return cfg
    name = fold_name(plan.info["repeat"], plan.info["fold"], plan.info["repeats"])
    return cfg.model_copy(update={"synthetic": cfg.synthetic.model_copy(
        update={"data": cfg.synthetic.data.replace("{fold}", name)})})


def run_cv(cfg: ExperimentConfig, out: str | os.PathLike, k: int = 5, repeats: int = 1, fold_seed: int | None = None,
           on_epoch: Callable[[dict], None] | None = None, echo: Callable[[str], None] = print, task_index: int = 0,
           task_count: int = 1, claim: bool = False, finish: bool = True) -> CvResult:
    """Train every fold that is not complete (this task's share of them), then, once all are,
    write the cv folder's own files. Returns {"complete": bool, "left": [...], "run": run.json + metrics}."""
    check_at_least(task_count, 1, "--task-count")
    if not 0 <= task_index < task_count:  # before the plan is written: nothing made for a task that is not one
        raise BadInputError(f"--task-index must lie in 0..{task_count - 1}, got {task_index}")
    cv = prepare_cv(cfg, out, k, repeats, fold_seed)
    if is_complete_run(cv.out):
        echo(f"{cv.out}: complete, nothing to do")
        return _result(cv.out)
    planned = [SweepRun(folder, cv.cfg) for folder in cv.plans]
    result = run_sweep(planned, lambda c, folder: train(fold_config(c, cv.plans[folder]), folder, on_epoch,
                                                            plan=cv.plans[folder]), echo,
                       task_index, task_count, claim)
    if result["failed"]:
        detail = "; ".join(f"{f.name}: {e}" for f, e in result["failed"])
        raise LesionLabError(f"{cv.out}: {len(result['failed'])} fold(s) failed ({detail}); finished folds are kept, so "
                             "the same command resumes")
    left = [f for f in cv.plans if not is_complete_run(f)]
    if left or not finish:
        return {"complete": False, "left": [str(f) for f in left]}
    return finish_cv(cv, echo)


def _result(out: Path) -> CvResult:
    run = Run.load(out)
    return {"complete": True, "left": [], "run": {**run.info, "metrics": run.metrics}}


def finish_cv(cv: CvPlan, echo: Callable[[str], None] = print) -> CvResult:
    # one finisher at a time, the others wait for it (workers and job-array tasks may all see the last fold finish)
    with held_lock(cv.out / ".finish.lock"):
        if is_complete_run(cv.out):
            return _result(cv.out)
        _assemble(cv)
    echo(f"{cv.out}: cross-validation complete")
    return _result(cv.out)


def _fold_runs(cv: CvPlan) -> list[tuple[Path, Run]]:
    runs = []
    for folder in cv.plans:
        run = load_run(folder, ("train",))
        got = run.info.get("plan", {}).get("fold_sha256")
        if got != cv.folds.sha256:
            raise ExistsError(f"{folder}: was trained on another fold assignment ({str(got)[:12]} vs "
                              f"{cv.folds.sha256[:12]}); move it away and run cv again")
        runs.append((folder, run))
    return runs


def _oof_table(cv: CvPlan, runs: list[tuple[Path, Run]]) -> pd.DataFrame:
    parts = []
    for _, run in runs:
        p = run.predictions("oof")
        plan = run.info["plan"]
        parts.append(pd.DataFrame({"id": p["id"], "group": p["group"], "fold": plan["fold"], "repeat": plan["repeat"],
                                   "label": p["label"].astype(int), "prob": p["prob"],
                                   "threshold": float(run.info["threshold"])}))
    oof = pd.concat(parts, ignore_index=True).sort_values(["repeat", "id"], kind="mergesort").reset_index(drop=True)
    for r in range(cv.folds.repeats):
        got = oof.loc[oof["repeat"] == r, "id"]
        if len(got) != len(cv.folds.ids) or set(got) != set(cv.folds.ids):
            raise BadInputError(f"{cv.out}: the folds' held-out images of repeat {r} do not cover the train pool once each")
    return oof


def _fold_row(run: Run) -> dict:
    plan, m = run.info["plan"], run.metrics["oof"]
    return {"repeat": plan["repeat"], "fold": plan["fold"], "folder": str(run.path.name),
            "held_out": plan["counts"]["held_out"], "inner_val": plan["counts"]["inner_val"],
            "draw": {"malignant": run.info["draw"]["malignant"], "benign": run.info["draw"]["benign"]},
            "best_epoch": run.info["best_epoch"], "threshold": run.info["threshold"],
            "oof": {k: m[k] for k in ("roc_auc", "average_precision", "pauc_80", "f1", "precision", "recall", "loss")},
            "oof_ci95": {k: m.get("ci95", {}).get(k) for k in ("roc_auc", "average_precision", "pauc_80")},
            "wall_seconds": run.info.get("wall_seconds")}


def fold_ensemble(runs: list[Run], side: str, mean: str = "prob") -> pd.DataFrame:
    """id, label, group, prob (the members' average) of one side every run scored."""
    frames = [r.predictions(side).sort_values("id", kind="mergesort").reset_index(drop=True) for r in runs]
    first = frames[0]
    for r, f in zip(runs[1:], frames[1:]):
        if not np.array_equal(f["id"].to_numpy(), first["id"].to_numpy()):
            raise BadInputError(f"{r.path}: its {side} images differ from {runs[0].path}'s")
    prob = average_probabilities(np.stack([f["prob"].to_numpy(dtype=float) for f in frames]), mean)
    out = first[["id", "label"]].copy()
    out["group"] = first["group"] if "group" in first else out["id"]
    out["prob"] = prob
    return out


def _assemble(cv: CvPlan) -> None:
    cfg, out = cv.cfg, cv.out
    started = time.time()
    pairs = _fold_runs(cv)
    runs = [r for _, r in pairs]
    oof = _oof_table(cv, pairs)
    _, y, groups, probs, thresholds = oof_arrays(oof)
    rule = cv.doc["group_rule"]
    unit = ci_unit(rule)
    deploy = parse_prevalence(cfg.prevalence) if cfg.prevalence else None
    oof_m = metrics_with_ci(y, probs, thresholds, cfg.bootstrap, cfg.seed, groups, unit, deploy)
    per_repeat = [metrics_with_ci(y, p, t, 0, cfg.seed, groups, unit, deploy) for p, t in zip(probs, thresholds)]
    # the fold ensemble: its threshold by the config's rule on the split's validation set, never on test
    ens = {side: fold_ensemble(runs, src) for side, src in (("val", "split_val"), ("test", "test"))}
    threshold_rule = ThresholdRule.parse(cfg.threshold)
    threshold = threshold_rule.choose(ens["val"]["label"].to_numpy(), ens["val"]["prob"].to_numpy())
    ens_m = {side: metrics_with_ci(e["label"].to_numpy(), e["prob"].to_numpy(), threshold, cfg.bootstrap, cfg.seed,
                                   e["group"].astype(str).to_numpy(), unit, deploy) for side, e in ens.items()}
    members = [{"relpath": str(folder.relative_to(out)), "path": str(folder.resolve())} for folder, _ in pairs]
    summary = {"folds": cv.folds.k, "repeats": cv.folds.repeats, "fold_seed": cv.doc["fold_seed"],
               "fold_sha256": cv.folds.sha256, "group_rule": rule, "ci95_unit": unit,
               "inner_validation": cv.doc["inner_validation"], "tta": cfg.tta,
               "oof": oof_m, "oof_per_repeat": per_repeat if cv.folds.repeats > 1 else [],
               "per_fold": [_fold_row(r) for r in runs],
               "ensemble": {"members": len(runs), "mean": "prob", "threshold_rule": str(threshold_rule),
                            "threshold": threshold, "val": ens_m["val"], "test": ens_m["test"]}}
    with RunWriter(out, "cv", into_existing=True) as w:
        w.table(fmt.OOF, oof)
        w.table(fmt.PREDICTIONS, pd.concat([e.assign(split=side)[["id", "split", "label", "prob", "group"]]
                                            for side, e in ens.items()]))
        write_json(w.path / fmt.CV_SUMMARY, summary)
        plots.roc({"out-of-fold": (y, probs[0])}, w.figure_path("oof_roc"))
        plots.precision_recall({"out-of-fold": (y, probs[0])}, w.figure_path("oof_pr"))
        curves = {f"fold ensemble, {side}": (e["label"].to_numpy(), e["prob"].to_numpy()) for side, e in ens.items()}
        plots.roc(curves, w.figure_path("roc"))
        plots.precision_recall(curves, w.figure_path("pr"))
        plots.confusion_matrix(ens["test"]["label"].to_numpy(), ens["test"]["prob"].to_numpy(), threshold,
                               w.figure_path("confusion_test"), "test, fold ensemble")
        first = runs[0]
        info: RunInfo = {"name": cfg.name, "data": str(Path(cfg.data).resolve()), "store_hash": first.info["store_hash"],
                "split_file": first.info["split_file"], "split_sha256": first.info["split_sha256"],
                "folds": cv.folds.k, "repeats": cv.folds.repeats, "fold_seed": cv.doc["fold_seed"],
                "fold_sha256": cv.folds.sha256, "group_rule": rule, "tta": cfg.tta,  # as in cv.json
                "inner_validation": INNER_RULE, "members": members, "mean": "prob",
                "threshold_rule": str(threshold_rule), "threshold": threshold,
                "draw": first.info["draw"], "monitor": first.info.get("monitor"),
                "runtime": first.info.get("runtime"),
                "wall_seconds": round(sum(r.info.get("wall_seconds") or 0 for r in runs) + time.time() - started, 1)}
        w.finish(to_dict(cfg), info, {"oof": oof_m, "val": ens_m["val"], "test": ens_m["test"]})


def start_local_workers(cfg: ExperimentConfig, out: Path, k: int, repeats: int, fold_seed: int | None,
                        workers: int) -> int:
    """`workers` claiming cv processes on this machine, the cores split between them; the plan is
    written first so that they all find it. Returns the worst exit code."""
    prepare_cv(cfg, out, k, repeats, fold_seed)
    args = ["cv", str(out / CV_CONFIG), "--out", str(out), "--folds", str(k), "--repeats", str(repeats), "--claim",
            "--no-finish"] + (["--fold-seed", str(fold_seed)] if fold_seed is not None else [])
    return spawn_local_workers(lambda i: args, workers)
