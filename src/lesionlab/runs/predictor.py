"""Scoring new images with any kind of run folder: `load_predictor(RUN_DIR)`.

predict, synth check (features), explain and export all start here, so a new run kind is a
new loader in PREDICTOR_LOADERS, not a new reader in every command."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from ..engine.runtime import Runtime, resolve_runtime
from ..engine.trainer import predict_logits
from ..errors import BadInputError
from ..metrics import prior_shift
from ..models import create_model
from .reader import Run, load_run


class Predictor(Protocol):
    size: int
    fit: str
    threshold: float

    def probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray: ...


@dataclass
class ModelPredictor:
    """One trained network with the preprocessing and decision rule of its run."""

    model: torch.nn.Module
    size: int
    fit: str
    threshold: float
    runtime: Runtime
    mean: tuple
    std: tuple
    prior_shift: dict | None = None  # {"from": training prevalence, "to": deployment prevalence}
    source: str = ""

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return predict_logits(self.model, images, self.runtime, batch_size, self.mean, self.std)

    def to_probabilities(self, logits: np.ndarray) -> np.ndarray:
        prob = 1 / (1 + np.exp(-logits))
        if self.prior_shift:
            prob = prior_shift(prob, self.prior_shift["from"], self.prior_shift["to"])
        return prob

    def probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.to_probabilities(self.logits(images, batch_size))


def load_model_predictor(run: Run, device: str = "auto") -> ModelPredictor:
    ckpt = run.checkpoint()
    path = run.path / "checkpoint.pt"
    try:
        model = create_model(ckpt["model"], image_size=ckpt["image_size"], **ckpt.get("model_kwargs", {}))
        model.load_state_dict(ckpt["state_dict"])
    except KeyError as e:
        raise BadInputError(f"{path}: no '{e.args[0]}' entry; not a lesionlab model checkpoint") from None
    except RuntimeError as e:
        raise BadInputError(f"{path}: its weights do not fit model '{ckpt['model']}' ({str(e).splitlines()[0]})") from None
    rt = resolve_runtime(device, "auto", "true" if ckpt.get("channels_last") else "false")
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    from ..engine.runtime import MEAN, STD

    # checkpoints of format version 0 did not record the normalisation: it was always ImageNet's
    mean, std = tuple(ckpt.get("mean", MEAN)), tuple(ckpt.get("std", STD))
    return ModelPredictor(model.eval(), int(ckpt["image_size"]), ckpt["fit"], float(ckpt["threshold"]), rt, mean, std,
                          ckpt.get("prior_shift"), str(run.path))


def _load_tabular_predictor(run: Run, device: str = "auto"):
    from ..tabular.predictor import load_tabular_predictor

    return load_tabular_predictor(run, device)


# a tabular predictor takes rows (metadata), not images: it has takes = "rows" and probabilities_rows()
PREDICTOR_LOADERS: dict[str, Callable[[Run, str], Predictor]] = {"train": load_model_predictor,
                                                                 "tabular": _load_tabular_predictor}


def load_predictor(run_dir: str | os.PathLike, device: str = "auto") -> Predictor:
    path = Path(run_dir)
    run = load_run(path)
    loader = PREDICTOR_LOADERS.get(run.kind)
    if loader is None:
        raise BadInputError(f"{path}: a {run.kind} run folder cannot score images; use a train, cv or ensemble run")
    return loader(run, device)
