"""A finished train run read back for `train --pretrained RUN_DIR`: the two-step way of learning
from several sources (train on one data set, then fine-tune on another from that run's weights,
its classifier head kept or fresh). The new run takes the old one's preprocessing (normalisation,
interpolation) and is refused when its evaluation images were among the old run's training draw,
by id and, where the old run's data set is still there, by content."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import numpy as np
from torch import nn

from ..engine.runtime import Preprocessing
from ..errors import BadInputError, LeakError, preview
from . import format as fmt
from .reader import Run, is_complete_run, read_table


@dataclass
class RunWeights:
    path: Path
    model: str
    store_size: int
    state_dict: dict
    preprocessing: Preprocessing
    run: Run

    def describe(self, head: str) -> dict:
        return {"path": str(self.path.resolve()), "model": self.model, "head": head,
                "data": self.run.info.get("data"), "store_hash": self.run.info.get("store_hash"),
                "preprocessing": self.preprocessing.to_dict(),
                "weights": (self.run.info.get("weights") or {}).get("source")}


def is_train_run(value: object) -> TypeGuard[str | os.PathLike]:
    """True when --pretrained names a complete train run folder (not an encoder)."""
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bool) or not Path(value).is_dir():
        return False
    return is_complete_run(value) and Run.load(value).kind == "train"


def load_run_weights(path: str | os.PathLike) -> RunWeights:
    path = Path(path)
    run = Run.load(path)
    ckpt = run.checkpoint()
    try:
        return RunWeights(path, str(ckpt["model"]), int(ckpt["image_size"]), ckpt["state_dict"],
                          Preprocessing.from_dict({**ckpt, "source": f"the run --pretrained {path}"}), run)
    except KeyError as e:
        raise BadInputError(f"{path / fmt.CHECKPOINT}: no '{e.args[0]}' entry; not a lesionlab model checkpoint") from None


def check_run_fits(rw: RunWeights, model: str, side: int, fixed_size: bool) -> None:
    """The same architecture; and the same input side when the architecture only takes one."""
    if rw.model != model:
        raise BadInputError(f"--pretrained {rw.path}: a run of model '{rw.model}' but this run's model is '{model}' "
                            f"(pass --model {rw.model})")
    trained = rw.preprocessing.side(rw.store_size)
    if fixed_size and trained != side:
        raise BadInputError(f"--pretrained {rw.path}: '{model}' takes one input size; that run's was {trained} px, this "
                            f"run's is {side} px (prepare the data at --size {trained} or pass --input-size {trained})")


def load_run_state(model: nn.Module, rw: RunWeights, head: str) -> int:
    """The run's weights into a fresh model of the same architecture: all of them (head 'keep'), or
    all but the classifier head's (head 'fresh'). Every key must fit; returns the tensors loaded."""
    from ..models.encoder import head_name, is_head_key, load_encoder_state

    source = f"--pretrained {rw.path}"
    if head == "fresh":
        name = head_name(model)
        return load_encoder_state(model, {k: v for k, v in rw.state_dict.items() if not is_head_key(k, name)}, source)
    try:
        model.load_state_dict(rw.state_dict, strict=True)
    except RuntimeError as e:
        raise BadInputError(f"{source}: its weights do not fit {type(model).__name__} "
                            f"({str(e).splitlines()[0][:300]})") from None
    return len(rw.state_dict)


def _drawn_ids(rw: RunWeights) -> np.ndarray:
    return read_table(rw.run.file(fmt.TRAIN_DRAW))["id"].astype(str).to_numpy()


def check_not_trained_on(rw: RunWeights, eval_ids: list[str], eval_images: np.ndarray, store_hash: str) -> dict:
    """Refuse when any image this run evaluates on (validation, test, out-of-fold) was in the old run's
    training draw: by id, and by content when the old run's data set is another one that can still be
    read (a copy under another name). Returns what was checked, for run.json."""
    drawn = _drawn_ids(rw)
    both = sorted(set(drawn) & set(eval_ids))
    if both:
        raise LeakError(f"--pretrained {rw.path}: {len(both)} of the images this run evaluates on were in that run's "
                        f"training draw: {preview(both)}; fine-tune from a run trained on other images")
    checked = {"by": "id", "drawn": int(len(drawn))}
    if rw.run.info.get("store_hash") == store_hash:
        return checked  # the same data set: its ids are its images
    from ..data.copy_guard import copies_in_store
    from ..data.store import Store

    data = rw.run.config.get("data") or rw.run.info.get("data")
    try:
        store = Store.open(str(data))
    except Exception:  # noqa: BLE001 - moved or deleted: the id check above stands, and says so
        return {**checked, "content": f"not checked: its data set {data} could not be read"}
    if store.content_hash != rw.run.info.get("store_hash"):
        return {**checked, "content": f"not checked: {data} has changed since that run"}
    pos = np.flatnonzero(np.isin(store.table["id"].astype(str).to_numpy(), drawn))
    hits = copies_in_store(store, pos, eval_images)
    if hits:
        sid = store.table["id"].astype(str).to_numpy()
        pairs = [f"{sid[i]} ~ {eval_ids[j]} ({s:.3f})" for i, j, s in hits]
        raise LeakError(f"--pretrained {rw.path}: {len(hits)} image(s) of that run's training draw are copies of images "
                        f"this run evaluates on: {preview(pairs)}; fine-tune from a run trained on other images")
    return {"by": "id and content", "drawn": int(len(drawn)), "content_checked": int(len(pos))}

