"""Encoder run folders (kind "encoder", written by `lesionlab pretrain`) read back for `train
--pretrained ENC_DIR`: the weights, the architecture and input size they fit, and the images
they were pretrained on (so that a run never evaluates on an image its encoder has seen)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import numpy as np

from ..engine.runtime import IMAGENET, Preprocessing
from ..errors import BadInputError, LeakError, preview
from . import format as fmt
from .kinds import RunKind, register_kind
from .reader import Run, is_complete_run, read_table
from .records import RunInfo, RunMetrics


@dataclass
class EncoderWeights:
    path: Path
    model: str
    image_size: int
    method: str
    feature_dim: int
    state_dict: dict
    info: RunInfo
    metrics: RunMetrics
    preprocessing: Preprocessing = IMAGENET  # the normalisation it was pretrained with (its backbone's own)

    def describe(self) -> dict:
        return {"path": str(self.path.resolve()), "method": self.method, "model": self.model,
                "image_size": self.image_size, "epochs": self.info.get("epochs_run"),
                "quality": self.metrics.get("quality")}

    def pretrained_ids(self) -> set[str]:
        return set(read_table(self.path / fmt.PRETRAIN_IDS)["id"])  # formula-safe ids restored


def is_encoder_dir(value: object) -> TypeGuard[str | os.PathLike]:
    """True when --pretrained names a folder: an ENC_DIR (weights files are files); what the folder
    holds is checked by load_encoder, which explains what is wrong with it."""
    return isinstance(value, (str, os.PathLike)) and not isinstance(value, bool) and Path(value).is_dir()


def encoder_checkpoint(model: str, image_size: int, method: str, feature_dim: int, state_dict: dict,
                       channels_last: bool, mean: tuple, std: tuple, interpolation: str = "bilinear") -> dict:
    """encoder.pt: plain types and tensors only (loads with weights_only=True)."""
    return {"model": model, "image_size": int(image_size), "method": method, "feature_dim": int(feature_dim),
            "state_dict": state_dict, "channels_last": bool(channels_last), "mean": list(mean), "std": list(std),
            "interpolation": interpolation, "format_version": fmt.FORMAT_VERSION}


def state_dir(out: Path) -> Path:
    """Where `lesionlab pretrain` keeps an unfinished pretraining of ENC_DIR `out`, beside it."""
    from ..fileio import hidden_name

    return out.parent / hidden_name(out.name, "pretrain-state")


def load_encoder(path: str | os.PathLike) -> EncoderWeights:
    path = Path(path)
    if not is_complete_run(path):
        hint = (" (pretraining has not finished: run the same `lesionlab pretrain` command again to resume it)"
                if state_dir(path).exists() else "")
        raise BadInputError(f"--pretrained {path}: not a complete encoder folder (needs {', '.join(fmt.REQUIRED)} "
                            f"and {fmt.ENCODER}){hint}")
    run = Run.load(path)
    if run.kind != "encoder":
        raise BadInputError(f"--pretrained {path}: a {run.kind} run folder, not an encoder made by `lesionlab "
                            "pretrain`; a trained run's weights are not an encoder")
    from ..fileio import load_checkpoint

    ckpt = load_checkpoint(run.file(fmt.ENCODER))
    try:
        pre = Preprocessing.from_dict({**ckpt, "input_size": 0, "source": f"the encoder --pretrained {path}"})
        return EncoderWeights(path, ckpt["model"], int(ckpt["image_size"]), ckpt["method"], int(ckpt["feature_dim"]),
                              ckpt["state_dict"], run.info, run.metrics, pre)
    except KeyError as e:
        raise BadInputError(f"{path / fmt.ENCODER}: no '{e.args[0]}' entry; not a lesionlab encoder") from None


def check_encoder_fits(enc: EncoderWeights, model: str, image_size: int) -> None:
    """The run's architecture and input size must be the encoder's: both named when they differ."""
    problems = []
    if enc.model != model:
        problems.append(f"it was pretrained as '{enc.model}' but this run's model is '{model}' "
                        f"(pass --model {enc.model}, or pretrain a {model} encoder)")
    if enc.image_size != image_size:
        problems.append(f"it was pretrained at {enc.image_size} px but this run's data set is {image_size} px "
                        f"(prepare the data at --size {enc.image_size}, or pretrain with --size {image_size})")
    if problems:
        raise BadInputError(f"--pretrained {enc.path}: " + "; ".join(problems))


def pretraining_store(enc: EncoderWeights, store):
    """The prepared data set the encoder's images come from (run.json's source), holding every id of
    pretrain_ids.csv; `store` (the run's own) where it is that data set by content hash."""
    from ..data.store import Store

    source = enc.info.get("source") or {}
    data, digest = source.get("data"), source.get("store_hash")
    candidates = [store] if digest and store.content_hash == digest else []
    if data and Path(data).is_dir():
        try:
            candidates.append(Store.open(data))
        except BadInputError:
            pass
    ids = enc.pretrained_ids()
    for candidate in candidates:
        if ids <= set(candidate.table["id"].astype(str)):
            return candidate
    raise BadInputError(f"--pretrained {enc.path}: was pretrained on images of {data or 'a data set it does not name'}, "
                        "which is not there any more (or no longer holds them); checking that none of them is one of "
                        "this run's val/test images compares their content, so that data set is needed: put it back "
                        "at that path")


_CHECKED: set[tuple] = set()  # (encoder, data set, split) already checked in this process: cv's folds check once


def check_not_pretrained_on(enc: EncoderWeights, store, split) -> None:
    """Refuse a run whose validation or test images (of `split` of the prepared data set `store`) were
    among the encoder's pretraining images (labels were not used there, but a model must not have
    seen its evaluation images): by id; for an encoder pretrained on another data set also by content, as
    `pretrain --pretrain-data` checks, since data sets share images under other ids (ISIC 2019 holds HAM10000's)."""
    from ..data.copy_guard import copies_in_store

    key = (str(enc.path.resolve()), store.content_hash, split.sha256)
    if key in _CHECKED:
        return
    seen = enc.pretrained_ids()
    eval_pos = {side: split.positions(store.table, side) for side in ("val", "test")}
    eval_ids = {side: store.table["id"].astype(str).to_numpy()[pos] for side, pos in eval_pos.items()}
    for side, ids in eval_ids.items():
        both = sorted(set(ids) & seen)
        if both:
            raise LeakError(f"--pretrained {enc.path}: {len(both)} of this run's {side} images were among the "
                            f"images it was pretrained on: {preview(both)}; pretrain on this split's train pool "
                            "(lesionlab pretrain DATA_DIR) instead")
    source = pretraining_store(enc, store)
    if source.content_hash == store.content_hash:
        # pretrained on this data set: its ids are its images, and the split decides which images belong together
        # (as `pretrain` and `--pretrained RUN_DIR` decide); a content check inside one data set would flag its own
        # look-alikes (TBP crops of plain skin around a small spot match by shape) and refuse the train pool itself
        _CHECKED.add(key)
        return
    table_ids = source.table["id"].astype(str).to_numpy()
    positions = np.flatnonzero(np.isin(table_ids, list(seen)))
    sides = list(eval_pos)
    references = store.pixels(np.concatenate([eval_pos[s] for s in sides]))
    labels = [f"{i} ({s})" for s in sides for i in eval_ids[s]]
    hits = copies_in_store(source, positions, references)
    if hits:
        pairs = [f"{table_ids[p]} ~ {labels[j]} (similarity {sim:.3f})" for p, j, sim in hits]
        raise LeakError(f"--pretrained {enc.path}: {len(hits)} of the images it was pretrained on are copies of this "
                        f"run's val/test images (same content, other ids): {preview(pairs)}; pretrain without them "
                        "(on this split's train pool: lesionlab pretrain DATA_DIR)")
    _CHECKED.add(key)


# an encoder scores nothing itself: `train --pretrained ENC_DIR` starts a network from it
register_kind(RunKind("encoder", takes=None, loader=None, files=(fmt.ENCODER, fmt.HISTORY, fmt.PRETRAIN_IDS)))
