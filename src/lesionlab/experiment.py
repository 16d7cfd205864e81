"""One experiment, start to finish: draw -> train -> choose threshold on val -> evaluate ->
a complete run folder (or none: the folder is built aside and moved into place at the end)."""
from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import __version__, plots
from .config import ExperimentConfig, to_dict
from .data.sampling import draw_training_set
from .data.splits import load_split
from .data.store import Store
from .engine.runtime import MEAN, STD, resolve_runtime
from .data.sampling import EpochSampler
from .engine.trainer import Batches, TrainOptions, predict_logits, train
from .errors import BadInputError, ExistsError
from .fileio import publish_dir, write_json, write_text, write_yaml
from .metrics import ThresholdRule, bce_per_sample, bootstrap_ci, compute_metrics, parse_prevalence, prior_shift
from .models import create_model, get_spec
from .runs import is_complete_run

log = logging.getLogger(__name__)

FIGURES = {"confusion_val": "confusion_val.png", "confusion_test": "confusion_test.png",
           "curves": "training_curves.png", "roc": "roc.png", "pr": "pr.png"}


def _staging_dir(out: Path) -> Path:
    if is_complete_run(out):
        raise ExistsError(f"{out}: already holds a run; choose another --out (lesionlab never overwrites a run)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExistsError(f"{out}: exists and is not empty; choose a new or empty folder for the run")
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # a stale one from an interrupted run of ours
    staging.mkdir(parents=True)
    return staging


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def run_experiment(cfg: ExperimentConfig, out: str | os.PathLike,
                   on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train and evaluate one experiment into the run folder `out`; return run.json's content."""
    if not cfg.data:
        raise BadInputError("no data set given: pass --data DATA_DIR or set 'data' in the config")
    out = Path(out)
    started = time.time()
    store = Store.open(cfg.data)
    split = load_split(store, cfg.split)
    table = store.table
    labels = table["label"].to_numpy()
    pool = split.positions(table, "train")
    draw = draw_training_set(labels, pool, cfg.ratio, cfg.n_malignant, cfg.seed)
    val_pos, test_pos = split.positions(table, "val"), split.positions(table, "test")
    sampler = EpochSampler(cfg.sampler, labels, draw, pool, cfg.seed)
    n_mal, n_ben = int(labels[draw].sum()), int((labels[draw] == 0).sum())
    pos_weight = (n_ben / n_mal if cfg.pos_weight == "auto" else cfg.pos_weight)
    deploy = parse_prevalence(cfg.prevalence) if cfg.prevalence else None
    opts = TrainOptions(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay, scheduler=cfg.scheduler, warmup_epochs=cfg.warmup_epochs, loss=cfg.loss,
        pos_weight=pos_weight, focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma,
        label_smoothing=cfg.label_smoothing, augment=cfg.augment, monitor=cfg.resolved_monitor(),
        patience=cfg.patience if cfg.early_stop else 0, ema=cfg.ema, eval_batch_size=cfg.eval_batch_size)
    staging = _staging_dir(out)
    try:
        _seed_everything(cfg.seed)
        spec = get_spec(cfg.model)
        model = create_model(cfg.model, image_size=store.size, pretrained=cfg.pretrained)
        rt = resolve_runtime(cfg.device, cfg.precision, cfg.channels_last,
                             model_prefers_channels_last=spec.channels_last, num_threads=cfg.num_threads)
        val_x, test_x = store.pixels(val_pos), store.pixels(test_pos)
        val_y, test_y = labels[val_pos], labels[test_pos]
        batches = Batches(store.pixels, labels, sampler, cfg.batch_size)
        result = train(model, batches, val_x, val_y, rt, opts, on_epoch)
        model.load_state_dict(result.best_state)

        logits = {"val": predict_logits(model, val_x, rt, cfg.eval_batch_size),
                  "test": predict_logits(model, test_x, rt, cfg.eval_batch_size)}
        truth = {"val": val_y, "test": test_y}
        raw = {k: 1 / (1 + np.exp(-v)) for k, v in logits.items()}
        # what the model's probabilities are calibrated to: the training prevalence, with the
        # malignant odds multiplied by pos_weight when BCE weights them
        trained_at = sampler.train_prevalence
        if pos_weight:
            trained_at = pos_weight * trained_at / (pos_weight * trained_at + 1 - trained_at)
        probs = {k: prior_shift(v, trained_at, deploy) for k, v in raw.items()} if deploy else raw
        rule = ThresholdRule.parse(cfg.threshold)
        threshold = rule.choose(val_y, probs["val"])  # never on test
        metrics = {}
        for side in ("val", "test"):
            losses = bce_per_sample(truth[side], logits[side])
            m = compute_metrics(truth[side], probs[side], threshold, losses, deploy)
            if cfg.bootstrap:
                m["ci95"] = bootstrap_ci(truth[side], probs[side], threshold, losses, cfg.bootstrap, seed=cfg.seed,
                                         prevalence=deploy)
            m["n_malignant"], m["n_benign"] = int(truth[side].sum()), int((truth[side] == 0).sum())
            metrics[side] = m

        ids = table["id"].astype(str).to_numpy()
        preds = pd.concat([pd.DataFrame({"id": ids[pos], "split": side, "label": truth[side], "prob": probs[side],
                                         **({"prob_model": raw[side]} if deploy else {})})
                           for side, pos in (("val", val_pos), ("test", test_pos))])
        write_text(staging / "predictions.csv", preds.to_csv(index=False, float_format="%.6g"))
        draw_frame = pd.DataFrame({"id": ids[draw], "label": labels[draw]})
        write_text(staging / "train_draw.csv", draw_frame.to_csv(index=False))
        pd.DataFrame(result.history).to_csv(staging / "history.csv", index=False)
        torch.save({"model": cfg.model, "image_size": store.size, "fit": store.fit, "mean": MEAN, "std": STD,
                    "state_dict": result.best_state, "threshold": threshold, "threshold_rule": str(rule),
                    "prior_shift": {"from": trained_at, "to": deploy} if deploy else None,
                    "channels_last": rt.channels_last, "lesionlab_version": __version__,
                    "best_epoch": result.best_epoch}, staging / "checkpoint.pt")
        _figures(staging, result, truth, probs, threshold)
        write_yaml(staging / "config.yaml", to_dict(cfg))
        run_info = {
            "lesionlab_version": __version__,
            "name": cfg.name or out.name,
            "data": str(Path(cfg.data).resolve()),
            "store_hash": store.content_hash,
            "split_file": split.path.name,
            "split_sha256": split.sha256,
            "draw": {"malignant": n_mal, "benign": n_ben,
                     "pool_malignant": int(labels[pool].sum()), "pool_benign": int((labels[pool] == 0).sum())},
            "levers": {"loss": cfg.loss, "pos_weight": pos_weight, "sampler": cfg.sampler, "augment": cfg.augment,
                       "optimizer": cfg.optimizer, "scheduler": cfg.scheduler, "ema": cfg.ema,
                       "pretrained": cfg.pretrained, "label_smoothing": cfg.label_smoothing},
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "best_epoch": result.best_epoch,
            "monitor": opts.monitor,
            "prevalence": {"trained_at": trained_at, "deployment": deploy,
                           "note": ("focal loss and label smoothing change calibration; the prior shift assumes "
                                    "BCE-calibrated probabilities") if deploy and (cfg.loss == "focal" or cfg.label_smoothing) else ""},
            "threshold_rule": str(rule),
            "threshold": threshold,
            "speed": {"train_img_s": round(result.train_img_s, 2), "compute_img_s": round(result.compute_img_s, 2),
                      "loop_vs_compute": round(result.train_img_s / result.compute_img_s, 3)},
            "runtime": rt.describe(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "wall_seconds": round(time.time() - started, 1),
        }
        write_json(staging / "run.json", run_info)
        write_json(staging / "metrics.json", metrics)
        publish_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {**run_info, "metrics": metrics}


def _figures(folder: Path, result, truth: dict, probs: dict, threshold: float) -> None:
    figs = folder / "figures"
    plots.confusion_matrix(truth["val"], probs["val"], threshold, figs / FIGURES["confusion_val"], "validation")
    plots.confusion_matrix(truth["test"], probs["test"], threshold, figs / FIGURES["confusion_test"], "test")
    plots.training_curves(result.history, figs / FIGURES["curves"], result.best_epoch)
    curves = {side: (truth[side], probs[side]) for side in ("val", "test")}
    plots.roc(curves, figs / FIGURES["roc"])
    plots.precision_recall(curves, figs / FIGURES["pr"])
