"""`lesionlab pretrain`: self-supervised pretraining of a registry model's encoder.

Reads only the split's train pool of DATA_DIR (val and test images are never read), or every
image of another prepared data set given as --pretrain-data, which is refused when it holds any
of the split's val or test images (by id, then by content). Labels are never used for training;
the train-pool labels of a held-out inner validation part score the encoder (kNN and linear
probe) before training and every few epochs.

ENC_DIR is a run folder of kind "encoder" (runs/format.py), built aside and published whole.
While pretraining runs, its state (weights, optimizer, schedule, history) is saved after every
epoch in a hidden folder beside ENC_DIR; the same command started again resumes from it.
"""
from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .. import plots
from ..config import PretrainConfig
from ..data.copy_guard import copies_in_store
from ..data.splits import group_keys, load_split
from ..data.store import Store
from ..engine.runtime import IMAGENET, resolve_runtime
from ..engine.ssl import SSLOptions, SSLTrainer, quality
from ..engine.trainer import prefetch
from ..errors import BadInputError, LeakError, preview
from ..fileio import atomic_path, load_checkpoint
from ..models import create_model, get_spec
from ..models.timm_models import pretrained_source
from ..runs import RunWriter, check_new_run_folder
from ..runs import format as fmt
from ..runs.encoder_run import encoder_checkpoint, state_dir
from ..runs.records import RunInfo, RunMetrics, RunResult, SplitRecord

log = logging.getLogger(__name__)

INNER_VAL_MAX = 1000
BANK_MAX = 3000
STATE = "state.pt"
# config keys that may change between an interrupted run and its resumption
_MAY_CHANGE = ("eval_every", "device", "precision", "num_threads")


@dataclass
class PretrainData:
    images: Store            # the store the pretraining images come from
    positions: np.ndarray    # its table positions that are pretrained on
    source: dict
    bank: np.ndarray         # DATA_DIR positions: kNN/probe bank (train pool minus inner val)
    inner_val: np.ndarray    # DATA_DIR positions held out from pretraining to score the encoder
    store: Store
    split_info: SplitRecord


def _inner_split(table: pd.DataFrame, pool: np.ndarray, group: str, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole groups of the train pool for the inner validation part (at most INNER_VAL_MAX images)."""
    keys, _ = group_keys(table.iloc[pool].reset_index(drop=True), group if group in table else "none")
    rng = np.random.default_rng([seed, 7])
    uniq = np.unique(keys)
    chosen = set(uniq[rng.permutation(len(uniq))[: max(1, int(round(share * len(uniq))))]])
    held = np.array([k in chosen for k in keys])
    inner = pool[held]
    if len(inner) > INNER_VAL_MAX:  # images trimmed here are left out of both: their group is held out
        inner = np.sort(rng.choice(inner, INNER_VAL_MAX, replace=False))
    return pool[~held], inner


def _refuse_eval_images(other: Store, store: Store, eval_pos: np.ndarray, origin: str) -> None:
    """--pretrain-data must hold none of the split's val or test images, by id or by content."""
    if other.content_hash == store.content_hash:
        raise LeakError(f"--pretrain-data {origin}: is the data set of the split itself, whose val and test images "
                        "would be pretrained on; leave --pretrain-data out to pretrain on its train pool only")
    eval_ids = store.table["id"].astype(str).to_numpy()[eval_pos]
    other_ids = set(other.table["id"].astype(str))
    same = sorted(set(eval_ids) & other_ids)
    if same:
        raise LeakError(f"--pretrain-data {origin}: holds {len(same)} of the split's val/test images (by id): "
                        f"{preview(same)}; remove them from that data set or pretrain on the train pool")
    hits = copies_in_store(other, np.arange(len(other.table)), store.pixels(eval_pos))
    if hits:
        oid = other.table["id"].astype(str).to_numpy()
        pairs = [f"{oid[i]} ~ {eval_ids[j]} ({s:.3f})" for i, j, s in hits]
        raise LeakError(f"--pretrain-data {origin}: {len(hits)} image(s) are copies of the split's val/test images: "
                        f"{preview(pairs)}; remove them from that data set")


def gather(cfg: PretrainConfig) -> PretrainData:
    store = Store.open(cfg.data)
    split = load_split(store, cfg.split)
    table = store.table
    pool = split.positions(table, "train")
    eval_pos = np.sort(np.r_[split.positions(table, "val"), split.positions(table, "test")])
    if len(np.intersect1d(pool, eval_pos)):  # load_split guarantees this; checked where it matters
        raise LeakError(f"{split.path}: train pool and val/test overlap")
    bank, inner = _inner_split(table, pool, split.group_rule, cfg.inner_val, cfg.seed)
    labels = table["label"].to_numpy()
    if labels[inner].min(initial=1) == labels[inner].max(initial=0):
        raise BadInputError(f"--inner-val {cfg.inner_val}: the held-out part of the train pool ({len(inner)} images) "
                            "lacks one class; raise --inner-val")
    split_info: SplitRecord = {"data": str(Path(cfg.data).resolve()), "store_hash": store.content_hash,
                  "split_file": split.path.name, "split_sha256": split.sha256}
    if cfg.pretrain_data:
        other = Store.open(cfg.pretrain_data)
        _refuse_eval_images(other, store, eval_pos, cfg.pretrain_data)
        return PretrainData(other, np.arange(len(other.table)),
                            {"kind": "pretrain_data", "data": str(Path(cfg.pretrain_data).resolve()),
                             "store_hash": other.content_hash, "size": other.size, "n_images": len(other.table),
                             "checked_against_val_test": int(len(eval_pos))},
                            bank, inner, store, split_info)
    positions = bank  # the inner validation part's groups are held out
    return PretrainData(store, positions, {"kind": "train_pool", "data": split_info["data"],
                                           "store_hash": store.content_hash, "size": store.size,
                                           "n_images": int(len(positions)), "pool_images": int(len(pool))},
                        bank, inner, store, split_info)


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([seed, epoch, 11]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]  # full batches only


def _fingerprint(cfg: PretrainConfig) -> dict:
    return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _MAY_CHANGE}


def _resume(trainer: SSLTrainer, cfg: PretrainConfig, out: Path, fresh: bool) -> tuple[list[dict], int]:
    folder = state_dir(out)
    path = folder / STATE
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    if not path.exists():
        return [], 0
    state = load_checkpoint(path)
    old, new = state.get("fingerprint", {}), _fingerprint(cfg)
    diff = [f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        raise BadInputError(f"{out}: an interrupted pretraining with other settings is saved in {folder} "
                            f"({'; '.join(diff)}); rerun with those settings to resume it, or pass --fresh to start over")
    trainer.load_state_dict(state["trainer"])
    log.info("resuming %s after epoch %d", out, trainer.epochs_done)
    return list(state["history"]), trainer.epochs_done


def _save_state(trainer: SSLTrainer, cfg: PretrainConfig, out: Path, history: list[dict]) -> None:
    folder = state_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / STATE) as tmp:
        torch.save({"fingerprint": _fingerprint(cfg), "trainer": trainer.state_dict(), "history": history}, tmp)


def pretrain(cfg: PretrainConfig, out: str | os.PathLike, on_epoch: Callable[[dict], None] | None = None,
             on_step: Callable[[int, int], None] | None = None, fresh: bool = False) -> RunResult:
    """Pretrain cfg.model's encoder into the encoder folder `out`; returns run.json's content
    with the quality figures. Resumes an interrupted run of the same settings unless `fresh`."""
    out = Path(out)
    started = time.time()
    check_new_run_folder(out)
    data = gather(cfg)
    size = cfg.size or data.store.size
    spec = get_spec(cfg.model)
    threads = cfg.num_threads or int(os.environ.get("LESIONLAB_NUM_THREADS", 0))
    rt = resolve_runtime(cfg.device, cfg.precision, "auto", spec.channels_last, threads)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, image_size=size, pretrained=cfg.pretrained)
    # continued pretraining from ImageNet weights keeps the backbone's own normalisation
    found = pretrained_source(model)
    pre = found["preprocessing"] if found else IMAGENET
    weights = {"kind": "imagenet", "source": found["source"], "trained_at": found["trained_at"]} if found else {"kind": "scratch"}
    opts = SSLOptions(cfg.method, cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup_epochs, cfg.seed,
                      0 if spec.fixed_size else cfg.local_views, cfg.temperature)
    n = len(data.positions)
    trainer = SSLTrainer(model, size, opts, rt, n // cfg.batch_size, pre)  # full batches per epoch (_epoch_batches)
    history, start = _resume(trainer, cfg, out, fresh)
    resumed_from = start if start else None

    labels = data.store.table["label"].to_numpy()
    rng = np.random.default_rng([cfg.seed, 13])
    bank = data.bank if len(data.bank) <= BANK_MAX else np.sort(rng.choice(data.bank, BANK_MAX, replace=False))
    bank_x, bank_y = data.store.pixels(bank), labels[bank]
    val_x, val_y = data.store.pixels(data.inner_val), labels[data.inner_val]
    every = cfg.eval_every or max(1, cfg.epochs // 5)

    def score() -> dict:
        return quality(trainer.encoder, bank_x, bank_y, val_x, val_y, rt, size, cfg.knn_k, cfg.seed, pre)

    if start == 0:
        history = [{"epoch": 0, "loss": None, "lr": None, "seconds": 0.0, "img_s": None, **score()}]
        if on_epoch:
            on_epoch(history[-1])
    for epoch in range(start, cfg.epochs):
        positions = [data.positions[b] for b in _epoch_batches(n, cfg.batch_size, cfg.seed, epoch)]
        batches = prefetch(torch.from_numpy(data.images.pixels(p)) for p in positions)
        row = trainer.train_epoch(batches, epoch, on_step)
        if (epoch + 1) % every == 0 or epoch + 1 == cfg.epochs:
            row.update(score())
        history.append(row)
        _save_state(trainer, cfg, out, history)
        if on_epoch:
            on_epoch(row)
    return _write(cfg, out, data, trainer, history, size, rt, resumed_from, started, weights)


def _write(cfg: PretrainConfig, out: Path, data: PretrainData, trainer: SSLTrainer, history: list[dict], size: int,
           rt, resumed_from: int | None, started: float, weights: dict | None = None) -> RunResult:
    scored = [r for r in history if r.get("knn_roc_auc") is not None]
    keys = ("knn_roc_auc", "knn_pauc_80", "probe_roc_auc", "probe_pauc_80")
    metrics: RunMetrics = {"quality": {k: scored[-1][k] for k in keys}, "quality_at_start": {k: scored[0][k] for k in keys},
               "loss": history[-1]["loss"], "inner_val": {"images": int(len(data.inner_val)),
                                                         "malignant": int(data.store.table["label"].to_numpy()[data.inner_val].sum())}}
    trained = [r for r in history if r["epoch"] > 0]
    info: RunInfo = {
        "method": cfg.method, "model": cfg.model, "image_size": size, "feature_dim": trainer.encoder.dim,
        **data.split_info, "source": data.source, "weights": weights or {"kind": "scratch"},
        "preprocessing": trainer.pre.to_dict(),
        "inner_val": {"images": int(len(data.inner_val)), "bank_images": int(min(len(data.bank), BANK_MAX)),
                      "share_of_groups": cfg.inner_val},
        "epochs_run": trainer.epochs_done, "steps": trainer.step, "resumed_from_epoch": resumed_from,
        "speed": {"img_s": round(float(np.mean([r["img_s"] for r in trained[1:] or trained])), 1) if trained else None},
        "runtime": rt.describe(), "torch": torch.__version__, "python": platform.python_version(),
        "wall_seconds": round(time.time() - started, 1),
    }
    ids = data.images.table["id"].astype(str).to_numpy()[data.positions]
    with RunWriter(out, "encoder") as w:
        torch.save(encoder_checkpoint(cfg.model, size, cfg.method, trainer.encoder.dim, trainer.encoder_state(),
                                      rt.channels_last, trainer.pre.mean, trainer.pre.std, trainer.pre.interpolation),
                   w.path / fmt.ENCODER)
        w.table(fmt.HISTORY, pd.DataFrame(history), float_format=None)
        w.table(fmt.PRETRAIN_IDS, pd.DataFrame({"id": ids}), float_format=None)
        plots.ssl_curves(history, w.path / fmt.FIGURES_DIR / "pretrain_curves.png")
        w.finish(cfg.model_dump(mode="json"), info, metrics)
    shutil.rmtree(state_dir(out), ignore_errors=True)
    return {**info, "metrics": metrics}
