"""Scoring new images with any kind of run folder: `load_predictor(RUN_DIR)`.

predict, synth check (features), explain and export all start here, so a new run kind is a
loader registered with its kind (kinds.py) where the kind lives, not a new reader in every command.
The train, cv and ensemble kinds are declared at the end of this module."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..calibration import apply_calibration
from ..choices import ENSEMBLE_MEANS
from ..data.tta import check_mode, tta_logits
from ..engine.runtime import Preprocessing, Runtime, resolve_runtime
from ..engine.trainer import predict_logits
from ..errors import BadInputError, first_line
from ..metrics import logit, prior_shift
from ..models import create_model
from . import format as fmt
from .kinds import RunKind, register_kind, scoring_kind_names
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
    prior_shift: dict | None = None  # {"from": training (or calibration) prevalence, "to": deployment prevalence}
    source: str = ""
    tta: str = "none"  # test-time augmentation: none, flip or d4 (data/tta.py)
    calibration: dict | None = None  # a map fitted on validation (lesionlab.calibration), applied before the shift
    model_name: str = ""  # the registry name (explain looks up the model's CAM target layer by it)
    input_size: int = 0  # the model's input side when the run enlarged its images (0 = `size`)
    interpolation: str = "bilinear"  # how they were enlarged

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.mean, self.std, self.interpolation, self.input_size)

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        pre = self.preprocessing
        return tta_logits(lambda x: predict_logits(self.model, x, self.runtime, batch_size, pre), images, self.tta)

    def set_tta(self, mode: str) -> None:
        self.tta = check_mode(mode)

    def describe(self) -> dict:
        """The preprocessing and decision rule it applies (recorded by ensembles)."""
        return {"size": self.size, "fit": self.fit, "mean": list(self.mean), "std": list(self.std), "tta": self.tta,
                "input_size": self.input_size, "interpolation": self.interpolation,
                "prior_shift": self.prior_shift, "threshold": self.threshold}

    def to_probabilities(self, logits: np.ndarray) -> np.ndarray:
        prob = apply_calibration(logits, self.calibration)
        if self.prior_shift:
            prob = prior_shift(prob, self.prior_shift["from"], self.prior_shift["to"])
        return prob

    def probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.to_probabilities(self.logits(images, batch_size))


def load_model_predictor(run: Run, device: str = "auto") -> ModelPredictor:
    ckpt = run.checkpoint()
    path = run.path / "checkpoint.pt"
    try:
        # checkpoints written before input_size existed: the model took the store's size
        pre = Preprocessing.from_dict(ckpt)
    except (BadInputError, TypeError, ValueError) as e:  # a damaged preprocessing entry
        raise BadInputError(f"{path}: its preprocessing entries are not valid ({first_line(e)})") from None
    try:
        model = create_model(ckpt["model"], image_size=pre.side(int(ckpt["image_size"])), **ckpt.get("model_kwargs", {}))
        model.load_state_dict(ckpt["state_dict"])
    except KeyError as e:
        raise BadInputError(f"{path}: no '{e.args[0]}' entry; not a lesionlab model checkpoint") from None
    except RuntimeError as e:
        raise BadInputError(f"{path}: its weights do not fit model '{ckpt['model']}' ({str(e).splitlines()[0]})") from None
    rt = resolve_runtime(device, "auto", "true" if ckpt.get("channels_last") else "false")
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    # checkpoints of format version 0 did not record the normalisation: it was always ImageNet's (from_dict)
    return ModelPredictor(model.eval(), int(ckpt["image_size"]), ckpt["fit"], float(ckpt["threshold"]), rt, pre.mean,
                          pre.std, ckpt.get("prior_shift"), str(run.path), check_mode(ckpt.get("tta", "none")),
                          ckpt.get("calibration"), str(ckpt["model"]), pre.input_size, pre.interpolation)


def average_probabilities(member_probs: np.ndarray, mean: str = "prob") -> np.ndarray:
    """(members, images) probabilities -> one per image: their mean ('prob') or the sigmoid of the
    mean of their logits ('logit', a geometric mean of the odds)."""
    p = np.asarray(member_probs, dtype=np.float64)
    if mean == "prob":
        return p.mean(axis=0)
    if mean == "logit":
        return 1 / (1 + np.exp(-np.mean(logit(p), axis=0)))
    raise BadInputError(f"--mean must be one of {', '.join(ENSEMBLE_MEANS)}, got '{mean}'")


@dataclass
class EnsemblePredictor:
    """Several predictors of the same preprocessing; their probabilities averaged (a cv folder's
    folds, or an ensemble's members)."""

    members: list
    threshold: float
    mean: str = "prob"
    source: str = ""

    @property
    def size(self) -> int:
        return self.members[0].size

    @property
    def fit(self) -> str:
        return self.members[0].fit

    def member_probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return np.stack([m.probabilities(images, batch_size) for m in self.members])

    def probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return average_probabilities(self.member_probabilities(images, batch_size), self.mean)

    def set_tta(self, mode: str) -> None:
        for m in self.members:
            m.set_tta(mode)


def member_path(run: Run, entry: dict) -> Path:
    """A member folder recorded by a cv or ensemble run: relative to the run first (it may have
    moved with it), else the absolute path recorded."""
    for candidate in (run.path / entry.get("relpath", ""), Path(entry.get("path", ""))):
        if str(candidate) and (candidate / fmt.METRICS).exists():
            return candidate
    raise BadInputError(f"{run.path}: member {entry.get('path') or entry.get('relpath')} is not there any more "
                        "(a cv or ensemble run refers to its members' folders; keep them beside it)")


def load_ensemble_predictor(run: Run, device: str = "auto") -> EnsemblePredictor:
    members = run.info.get("members")
    if not members:
        raise BadInputError(f"{run.path}: run.json lists no members")
    predictors = [load_model_predictor(load_run(member_path(run, m), ("train",)), device) for m in members]
    ens = EnsemblePredictor(predictors, float(run.info["threshold"]), run.info.get("mean", "prob"), str(run.path))
    override = run.info.get("tta_override")
    if override:
        ens.set_tta(override)
    return ens


def load_image_predictor(run_dir: str | os.PathLike, device: str = "auto", doing: str = "score") -> Predictor:
    """The predictor of a run that scores images with torch networks (train, cv, ensemble), for the
    commands that work on the networks themselves (explain, export); a run that scores rows has none
    of its own, which is said with the image model it may be fused with."""
    run = load_run(run_dir)
    kind = run.declared
    if kind.takes == "rows":
        image = run.info.get("image")
        fused = (f"; it is fused with the image model {image.get('path')}: {doing} that one instead"
                 if isinstance(image, dict) and image.get("path") else "")
        raise BadInputError(f"{run_dir}: a {kind.name} run scores metadata rows and has no image model of its own to "
                            f"{doing}{fused}")
    return load_predictor(run, device)


def load_predictor(run_dir: str | os.PathLike | Run, device: str = "auto", tta: str | None = None) -> Predictor:
    """The predictor of any run kind (a folder, or a Run already read); `tta` overrides the test-time
    augmentation the run recorded."""
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    path = run.path
    loader = run.declared.loader
    if loader is None:
        raise BadInputError(f"{path}: a {run.kind} run folder cannot score anything; use a "
                            f"{', '.join(scoring_kind_names()[:-1])} or {scoring_kind_names()[-1]} run")
    predictor = loader(run, device)
    if tta is not None:
        if not hasattr(predictor, "set_tta"):
            raise BadInputError(f"{path}: --tta applies to image models; a {run.kind} run does not take it")
        predictor.set_tta(tta)
    return predictor


# the kinds that score images with torch networks; each kind's files are listed in format.py's docstring
register_kind(RunKind("train", takes="images", loader=load_model_predictor,
                      files=(fmt.PREDICTIONS, fmt.HISTORY, fmt.TRAIN_DRAW, fmt.CHECKPOINT, fmt.FIGURES_DIR),
                      report_figures=fmt.REPORT_FIGURES))
register_kind(RunKind("cv", takes="images", loader=load_ensemble_predictor,  # a cv folder scores with its fold ensemble
                      files=(fmt.CV_PLAN, fmt.FOLDS_TABLE, fmt.FOLDS_DIR, fmt.OOF, fmt.CV_SUMMARY, fmt.PREDICTIONS),
                      report_figures=fmt.CV_REPORT_FIGURES))
register_kind(RunKind("ensemble", takes="images", loader=load_ensemble_predictor, files=(fmt.MEMBERS, fmt.PREDICTIONS),
                      report_figures=fmt.ENSEMBLE_REPORT_FIGURES))
