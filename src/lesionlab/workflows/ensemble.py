"""`lesionlab ensemble`: average the probabilities of several trained models of one split (runs,
the folds of cv folders, or both) and judge the average on the split's validation and test sets.

Members are re-scored on the split's images through their own predictors, so each member's
preprocessing (size, fit, normalisation, TTA, prior shift), recorded in members.json, is applied
exactly as `predict ENS_DIR` will apply it. The ensemble's threshold is chosen on validation by a
rule (default: the first member's), never on test.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from .. import plots
from ..config import EnsembleConfig, validated
from ..data.splits import load_split, split_name
from ..data.store import Store
from ..errors import BadInputError
from ..fileio import write_json
from ..metrics import ThresholdRule, ci_unit, metrics_with_ci
from ..runs import Run, RunWriter, find_runs, is_complete_run, load_run
from ..runs import format as fmt
from ..runs.predictor import EnsemblePredictor, ModelPredictor, average_probabilities, load_model_predictor, member_path
from ..runs.records import RunInfo, RunResult, metrics_record


def expand_members(paths: list[str | os.PathLike]) -> list[tuple[Run, str | None]]:
    """Train runs, with the cv folder each came from (None for a plain run). A cv folder stands for
    its folds; a folder of runs for every train and cv run below it."""
    out: list[tuple[Run, str | None]] = []
    for p in paths:
        p = Path(p)
        runs = [Run.load(p)] if is_complete_run(p) else find_runs(p, ("train", "cv", "ensemble"))
        if not runs:
            raise BadInputError(f"{p}: holds no complete run")
        for run in runs:
            if run.kind == "train":
                out.append((run, None))
            elif run.kind == "cv":
                out += [(load_run(member_path(run, m), ("train",)), str(run.path)) for m in run.info["members"]]
            else:
                raise BadInputError(f"{run.path}: a {run.kind} run cannot be a member; give its members (train runs or "
                                    "cv folders) instead")
    seen: dict[Path, Path] = {}
    for run, _ in out:
        key = run.path.resolve()
        if key in seen:
            raise BadInputError(f"{run.path}: given twice as a member")
        seen[key] = run.path
    return out


def _check_same_split(runs: list[Run]) -> None:
    first = runs[0]
    for run in runs[1:]:
        for key, what in (("store_hash", "data set"), ("split_sha256", "split")):
            if run.info.get(key) != first.info.get(key):
                raise BadInputError(
                    f"ensemble members of different {what}s: {first.path} ({what} {str(first.info.get(key))[:12]}) and "
                    f"{run.path} ({str(run.info.get(key))[:12]}); an ensemble is judged on one split's val and test")


def _check_preprocessing(members: list[tuple[Run, ModelPredictor]]) -> None:
    run0, p0 = members[0]
    shift0 = (p0.prior_shift or {}).get("to")
    for run, p in members[1:]:
        if (p.size, p.fit) != (p0.size, p0.fit):
            raise BadInputError(
                f"ensemble members with incompatible preprocessing: {run0.path} takes {p0.size} px images ({p0.fit}) and "
                f"{run.path} {p.size} px ({p.fit}); every member must score the same image array")
        if (p.prior_shift or {}).get("to") != shift0:
            raise BadInputError(
                f"ensemble members with incompatible probabilities: {run0.path} is prior-shifted to "
                f"{shift0 or 'none'} and {run.path} to {(p.prior_shift or {}).get('to') or 'none'}; use one --prevalence")


def build_ensemble(members: list[str | os.PathLike], out: str | os.PathLike, mean: str = "prob", tta: str | None = None,
                   threshold: str | None = None, data: str | os.PathLike | None = None, n_boot: int = 2000, seed: int = 0,
                   name: str = "", device: str = "auto", batch_size: int = 256) -> RunResult:
    """Write ENS_DIR; returns run.json's content with the metrics."""
    started = time.time()
    out = Path(out)
    # the settings checked by the command's config model: the same one-line errors as the CLI's flags
    validated(EnsembleConfig, {"mean": mean, "tta": tta, "threshold": threshold, "n_boot": n_boot, "batch_size": batch_size})
    if not members:
        raise BadInputError("ensemble: give at least one MEMBER (a run or cv folder)")
    expanded = expand_members(members)
    runs = [r for r, _ in expanded]
    _check_same_split(runs)
    predictors = [load_model_predictor(r, device) for r in runs]
    pairs = list(zip(runs, predictors))
    _check_preprocessing(pairs)
    ensemble = EnsemblePredictor(predictors, threshold=float("nan"), mean=mean)  # the threshold is chosen on val below
    if tta is not None:
        ensemble.set_tta(tta)
    first = runs[0]
    store = Store.open(data or first.info["data"])
    if store.content_hash != first.info["store_hash"]:
        raise BadInputError(f"{store.root}: not the data set the members were trained on (store hash differs); "
                            "pass --data with the right DATA_DIR")
    split = load_split(store, split_name(first.info["split_file"]))
    if split.sha256 != first.info["split_sha256"]:
        raise BadInputError(f"{split.path}: differs from the split the members were judged on; pass --data with the right DATA_DIR")
    table = store.table
    rule_name = split.group_rule
    keys = split.group_keys(table)
    unit = ci_unit(rule_name)
    ids, labels = table["id"].astype(str).to_numpy(), table["label"].to_numpy()
    scores, member_scores = {}, {}
    for side in ("val", "test"):
        pos = split.positions(table, side)
        images = store.pixels(pos)
        member_scores[side] = ensemble.member_probabilities(images, batch_size)
        scores[side] = (pos, average_probabilities(member_scores[side], mean))
    rule = ThresholdRule.parse(threshold if threshold is not None else first.config.get("threshold", "0.5"))
    pos_val, prob_val = scores["val"]
    thr = rule.choose(labels[pos_val], prob_val)
    metrics = {side: metrics_with_ci(labels[pos], prob, thr, n_boot, seed, keys[pos], unit)
               for side, (pos, prob) in scores.items()}
    entries = []
    for (run, cv_dir), p in zip(expanded, predictors):
        entries.append({"path": str(run.path.resolve()), "relpath": os.path.relpath(run.path.resolve(), out.resolve()),
                        "kind": run.kind, "cv": cv_dir, "name": run.name, "model": run.config.get("model"),
                        "preprocessing": p.describe()})
    info: RunInfo = {"name": name or out.name, "data": str(Path(store.root).resolve()), "store_hash": store.content_hash,
            "split_file": split.path.name, "split_sha256": split.sha256, "group_rule": rule_name,
            "members": entries, "n_members": len(entries), "mean": mean, "tta_override": tta,
            "threshold_rule": str(rule), "threshold": thr,
            "given": [str(m) for m in members], "wall_seconds": round(time.time() - started, 1)}
    config = {"name": info["name"], "members": info["given"], "mean": mean, "tta": tta or "members' own",
              "threshold": str(rule), "model": "ensemble", "bootstrap": n_boot, "seed": seed}
    with RunWriter(out, "ensemble") as w:
        preds = pd.concat([pd.DataFrame({"id": ids[pos], "split": side, "label": labels[pos], "prob": prob,
                                         "group": keys[pos]}) for side, (pos, prob) in scores.items()])
        w.table(fmt.PREDICTIONS, preds)
        member_table = pd.concat([pd.DataFrame({"id": ids[scores[side][0]], "split": side,
                                                **{f"member_{k}": member_scores[side][k] for k in range(len(entries))}})
                                  for side in scores])
        w.table("member_predictions.csv", member_table)
        write_json(w.path / fmt.MEMBERS, entries)
        curves = {side: (labels[pos], prob) for side, (pos, prob) in scores.items()}
        plots.roc(curves, w.figure_path("roc"))
        plots.precision_recall(curves, w.figure_path("pr"))
        plots.confusion_matrix(labels[scores["test"][0]], scores["test"][1], thr, w.figure_path("confusion_test"),
                               "test, ensemble")
        w.finish(config, info, metrics_record(metrics))
    return {**info, "metrics": metrics}
