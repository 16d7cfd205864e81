"""`lesionlab tabular`: a gradient-boosted model on the metadata columns (the ISIC 2024 winners'
recipe), optionally fused with an image model's out-of-fold scores, into a run folder of kind
"tabular" that report, compare and predict read like any other.

    train pool -> K grouped stratified folds -> K fold models (each early-stopped on an inner
    grouped part of its training rows) -> out-of-fold probabilities (oof.csv)
    val, test  -> the fold models' mean -> threshold chosen on val -> metrics with intervals
"""
from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .. import plots
from ..config import TabularConfig
from ..data.folds import folds_hash
from ..data.parallel import cpu_count
from ..data.sources import ISIC2024_COLUMNS, ISIC2024_TEXT_COLUMNS
from ..data.splits import load_split
from ..data.store import CORE_COLUMNS, ROWS_FILE, Store
from ..errors import BadInputError
from ..fileio import csv_restore
from ..metrics import ThresholdRule, ci_unit, metrics_with_ci
from ..runs import RunWriter, check_new_run_folder
from ..runs import format as fmt
from ..runs.records import RunInfo, RunResult, metrics_record
from . import features as feat
from .column_guard import select_columns
from .engines import Params, get_engine
from .fusion import image_logit, rank_average
from .image import ImageScores, load_image_scores
from .model import fit_folds, grouped_folds, predict_average
from .predictor import IMPORTANCE, MODEL_DIR, REFERENCE_FILE, SPEC_FILE

log = logging.getLogger(__name__)
SIDES = ("val", "test")


def read_metadata(store: Store) -> pd.DataFrame:
    """The prepared rows with their metadata columns, in the store table's order: ISIC 2024's
    numeric columns as floats, everything else as text (typed later from its values)."""
    path = store.root / ROWS_FILE
    header = pd.read_csv(path, nrows=0).columns
    keep = [c for c in header if c not in CORE_COLUMNS or c in ("id", "patient_id", "lesion_id")]
    numeric = [c for c in keep if c in ISIC2024_COLUMNS and c not in ISIC2024_TEXT_COLUMNS and c != "target"]
    # read as text and restore the formula-safe cells (fileio.csv_safe) first: ids then match the store's,
    # and a negative number that a text column held ('-1.5 in rows.csv) reads back as -1.5
    table = csv_restore(pd.read_csv(path, usecols=keep, dtype=str, keep_default_na=False))
    for c in numeric:
        try:
            table[c] = pd.to_numeric(table[c].replace("", np.nan))
        except ValueError as e:
            raise BadInputError(f"{path}: column {c}: expected numbers, got {e}") from None
    if len(table) != len(store.table) or not (table["id"].to_numpy() == store.table["id"].to_numpy()).all():
        raise BadInputError(f"{path}: its rows differ from the store's table; prepare the data set again")
    return table


def _threads(cfg: TabularConfig) -> int:
    return cfg.num_threads or int(os.environ.get("LESIONLAB_NUM_THREADS", 0)) or cpu_count()


def _evaluate(truth: dict, probs: dict, keys: dict, unit: str, rule: ThresholdRule, n_boot: int,
              seed: int) -> tuple[float, dict]:
    """The threshold chosen on val, then every side's metrics with intervals that resample whole
    groups (metrics.metrics_with_ci, as for the other run kinds)."""
    threshold = rule.choose(truth["val"], probs["val"])  # never on test
    return threshold, {side: metrics_with_ci(truth[side], probs[side], threshold, n_boot, seed, groups=keys[side],
                                             unit=unit) for side in ("val", "test", "oof")}


def tabular_run(cfg: TabularConfig, out: str | os.PathLike, echo: Callable[[str], None] | None = None) -> RunResult:
    """Train and evaluate one tabular (or fused) model into the run folder `out`; returns run.json
    with the metrics."""
    say = echo or (lambda s: log.info(s))
    out = Path(out)
    started = time.time()
    check_new_run_folder(out)
    engine = get_engine(cfg.engine)
    store = Store.open(cfg.data)
    split = load_split(store, cfg.split)
    core = store.table
    labels = core["label"].to_numpy().astype(np.int64)
    pos = {side: split.positions(core, side) for side in ("train", *SIDES)}
    ids = {side: core["id"].astype(str).to_numpy()[p] for side, p in pos.items()}
    y = {side: labels[p] for side, p in pos.items()}
    keys, group_used = split.group_keys(core), split.group_rule
    groups = keys[pos["train"]]

    t0 = time.perf_counter()
    table = read_metadata(store)
    meta_cols = [c for c in table.columns if c != "id"]
    kinds = feat.column_kinds(table, meta_cols)
    train_table = table.iloc[pos["train"]].reset_index(drop=True)
    requested = None if cfg.features.strip().lower() == "auto" else [
        c.strip() for c in cfg.features.split(",") if c.strip()]
    selection = select_columns(train_table[meta_cols], y["train"], kinds, requested, cfg.allow_column)
    say(f"features: {len(selection.columns)} metadata column(s) ({', '.join(selection.columns)})"
        + (f"; dropped {', '.join(f'{c} ({r})' for c, r in selection.dropped.items())}" if selection.dropped else ""))
    stray = feat.not_numbers(table, {c: kinds[c] for c in selection.columns})
    if stray:
        say(f"features: {feat.describe_not_numbers(stray)}")

    image: ImageScores | None = None
    if cfg.image:
        image = load_image_scores(cfg.image, split, ids, y, groups)
        if cfg.folds is not None and cfg.folds != image.n_folds:
            raise BadInputError(f"--folds {cfg.folds}: the image model at {cfg.image} has {image.n_folds} folds; a "
                                "fused run uses the image model's fold assignment (leave --folds out)")
        folds = image.folds.to_numpy()
        fold_source = f"the image model's ({image.run.path})"
    else:
        folds = grouped_folds(y["train"], groups, cfg.folds or 5, cfg.seed)
        fold_source = f"StratifiedGroupKFold by {group_used}, seed {cfg.seed}"
    stacked = image is not None and cfg.fusion == "stack"
    image_prob: dict[str, np.ndarray] = {}  # side -> the image model's scores, with --image
    if image is not None:
        image_prob = {"train": image.oof.reindex(ids["train"]).to_numpy()}  # out of fold only
        image_prob.update({side: image.evaluation.reindex(ids[side]).to_numpy() for side in SIDES})

    spec = feat.make_spec(train_table, selection.columns, kinds, image=stacked, recipe=cfg.recipe, context=cfg.recipe)
    X = {}
    for side in ("train", *SIDES):
        rows = train_table if side == "train" else table.iloc[pos[side]].reset_index(drop=True)
        X[side] = feat.build_features(rows, spec, image_prob[side] if stacked else None, where=f"{side} rows",
                                      say_not_numbers=False)  # said once above
    feature_seconds = time.perf_counter() - t0
    say(f"{len(spec.columns)} model inputs ({len(spec.recipe)} from the ISIC 2024 recipe"
        + (", patient z-scores and counts" if spec.context else ", no patient context (no patient_id)")
        + (", image score features" if stacked else "") + f") in {feature_seconds:.1f} s")

    # offset fusion: every side's trees start from its image scores' logit (out of fold on the train pool)
    offset = {side: image_logit(p) for side, p in image_prob.items()} if image is not None and cfg.fusion == "offset" else {}
    params = Params(learning_rate=cfg.learning_rate, max_rounds=cfg.max_rounds, early_stopping=cfg.early_stopping,
                    min_child_samples=cfg.min_child_samples, threads=_threads(cfg))
    result = fit_folds(X["train"], y["train"], groups, folds, engine, params, cfg.neg_ratio, cfg.seed,
                       on_fold=lambda f, k, i: say(f"fold {f + 1}/{k}: {i['best_iteration']} rounds, fitted on "
                                                   f"{i['fit_malignant']} malignant / {i['fit_benign']} benign"),
                       offset=offset.get("train"))
    t1 = time.perf_counter()
    tab = {"train": result.oof, **{side: predict_average(engine, result.models, X[side], offset.get(side))
                                   for side in SIDES}}
    predict_seconds = time.perf_counter() - t1
    probs = dict(tab)
    if image is not None and cfg.fusion == "late":
        ref_img, ref_tab = image_prob["train"], result.oof
        probs = {side: rank_average(image_prob[side], tab[side], ref_img, ref_tab) for side in tab}

    rule = ThresholdRule.parse(cfg.threshold)
    truth = {"val": y["val"], "test": y["test"], "oof": y["train"]}
    side_keys = {"val": keys[pos["val"]], "test": keys[pos["test"]], "oof": groups}
    threshold, metrics = _evaluate(truth, {"val": probs["val"], "test": probs["test"], "oof": probs["train"]},
                                   side_keys, ci_unit(group_used), rule, cfg.bootstrap, cfg.seed)
    info: RunInfo = {
        "name": cfg.name or out.name,
        "data": str(Path(cfg.data).resolve()),
        "store_hash": store.content_hash,
        "split_file": split.path.name,
        "split_sha256": split.sha256,
        "group": group_used,
        "draw": {"malignant": int(y["train"].sum()), "benign": int((y["train"] == 0).sum()), "synthetic": 0,
                 "pool_malignant": int(y["train"].sum()), "pool_benign": int((y["train"] == 0).sum()),
                 "neg_ratio": cfg.neg_ratio},
        "engine": {"name": engine.name, "version": engine.version(), "threads": params.threads,
                   "learning_rate": params.learning_rate, "max_rounds": params.max_rounds,
                   "early_stopping": params.early_stopping, "min_child_samples": params.min_child_samples},
        "features": {"metadata": selection.columns, "dropped": selection.dropped, "single_column_auc": selection.single_auc,
                     "allowed_columns": selection.allowed, "recipe": spec.recipe, "patient_context": spec.context,
                     "not_numbers": stray,
                     "site": spec.site, "n_inputs": len(spec.columns)},
        "folds": {"k": int(folds.max()) + 1, "source": fold_source, "hash": folds_hash(ids["train"], folds),
                  "best_iterations": result.best_iterations, "per_fold": result.rows_trained},
        "image": image.record() if image is not None else None,
        "fusion": cfg.fusion if image is not None else None,
        "threshold_rule": str(rule),
        "threshold": threshold,
        "seconds": {"features": round(feature_seconds, 2), "train": round(result.seconds, 2),
                    "predict_val_test": round(predict_seconds, 2)},
        "python": platform.python_version(),
        "wall_seconds": None,
    }
    with RunWriter(out, "tabular") as w:
        _write(w, cfg, spec, engine, result, ids, y, side_keys, folds, tab, probs, image_prob, threshold,
               image, X["train"].columns)
        info["wall_seconds"] = round(time.time() - started, 1)
        w.finish(cfg.model_dump(mode="json"), info, metrics_record(metrics))
    return {**info, "metrics": metrics}


def _write(w: RunWriter, cfg, spec, engine, result, ids, y, side_keys, folds, tab, probs, image_prob, threshold,
           image, columns) -> None:
    preds = []
    for side in SIDES:
        # each image's group, as the other kinds write it: compare --on test then resamples whole groups
        frame = pd.DataFrame({"id": ids[side], "split": side, "label": y[side], "prob": probs[side],
                              "group": side_keys[side]})
        if image is not None:
            frame["prob_image"] = image_prob[side]
            frame["prob_tabular"] = tab[side]
        preds.append(frame)
    w.table(fmt.PREDICTIONS, pd.concat(preds, ignore_index=True))
    oof = pd.DataFrame({"id": ids["train"], "group": side_keys["oof"], "fold": folds, "repeat": 0, "label": y["train"],
                        "prob": probs["train"]})
    if image is not None:
        oof["prob_image"] = image_prob["train"]
        oof["prob_tabular"] = tab["train"]
    w.table(fmt.OOF, oof)
    gain = result.importance
    imp = pd.DataFrame({"feature": list(columns), "gain_mean": gain.mean(0), "gain_sd": gain.std(0),
                        "share": gain.mean(0) / max(gain.mean(0).sum(), 1e-12)}).sort_values("gain_mean", ascending=False)
    w.table(IMPORTANCE, imp)
    model_dir = w.subfolder(MODEL_DIR)
    from ..fileio import sha256_file, write_json

    files = {}
    for f, model in enumerate(result.models):
        name = f"fold-{f}{engine.suffix}"
        engine.save(model, model_dir / name)
        files[name] = sha256_file(model_dir / name)  # predict checks it: a damaged model file can crash an engine
    write_json(model_dir / SPEC_FILE, {"engine": engine.name, "n_folds": len(result.models), "threshold": threshold,
                                       "fusion": cfg.fusion if image is not None else None,
                                       "image": image.record() if image is not None else None,
                                       "features": spec.to_dict(), "files": files})
    if image is not None and cfg.fusion == "late":
        np.savez(model_dir / REFERENCE_FILE, image=np.sort(image_prob["train"]), tabular=np.sort(tab["train"]))
    truth = {side: y[side] for side in SIDES}
    plots.confusion_matrix(truth["val"], probs["val"], threshold, w.figure_path("confusion_val"), "validation")
    plots.confusion_matrix(truth["test"], probs["test"], threshold, w.figure_path("confusion_test"), "test")
    curves = {"oof (train pool)": (y["train"], probs["train"]), **{side: (y[side], probs[side]) for side in SIDES}}
    plots.roc(curves, w.figure_path("roc"))
    plots.precision_recall(curves, w.figure_path("pr"))
    plots.feature_importance(imp["feature"].tolist(), imp["gain_mean"].to_numpy(), w.figure_path("importance"))
