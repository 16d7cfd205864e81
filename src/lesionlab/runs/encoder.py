"""Encoder run folders (kind "encoder", written by `lesionlab pretrain`) read back for `train
--pretrained ENC_DIR`: the weights, the architecture and input size they fit, and the images
they were pretrained on (so that a run never evaluates on an image its encoder has seen)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError, LeakError, preview
from . import format as fmt
from .reader import Run, is_complete_run, read_table


@dataclass
class EncoderWeights:
    path: Path
    model: str
    image_size: int
    method: str
    feature_dim: int
    state_dict: dict
    info: dict
    metrics: dict

    def describe(self) -> dict:
        return {"path": str(self.path.resolve()), "method": self.method, "model": self.model,
                "image_size": self.image_size, "epochs": self.info.get("epochs_run"),
                "quality": self.metrics.get("quality")}

    def pretrained_ids(self) -> set[str]:
        return set(read_table(self.path / fmt.PRETRAIN_IDS)["id"])  # formula-safe ids restored


def is_encoder_dir(value: object) -> bool:
    """True when --pretrained names a folder: an ENC_DIR (weights files are files); what the folder
    holds is checked by load_encoder, which explains what is wrong with it."""
    return isinstance(value, (str, os.PathLike)) and not isinstance(value, bool) and Path(value).is_dir()


def encoder_checkpoint(model: str, image_size: int, method: str, feature_dim: int, state_dict: dict,
                       channels_last: bool, mean: tuple, std: tuple) -> dict:
    """encoder.pt: plain types and tensors only (loads with weights_only=True)."""
    return {"model": model, "image_size": int(image_size), "method": method, "feature_dim": int(feature_dim),
            "state_dict": state_dict, "channels_last": bool(channels_last), "mean": list(mean), "std": list(std),
            "format_version": fmt.FORMAT_VERSION}


def state_dir(out: Path) -> Path:
    """Where `lesionlab pretrain` keeps an unfinished pretraining of ENC_DIR `out`, beside it."""
    return out.parent / f".{out.name}.pretrain-state"


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
        return EncoderWeights(path, ckpt["model"], int(ckpt["image_size"]), ckpt["method"], int(ckpt["feature_dim"]),
                              ckpt["state_dict"], run.info, run.metrics)
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


def check_not_pretrained_on(enc: EncoderWeights, eval_ids: dict[str, list[str]]) -> None:
    """Refuse a run whose validation or test images were among the encoder's pretraining images
    (labels were not used there, but a model must not have seen its evaluation images)."""
    seen = enc.pretrained_ids()
    for side, ids in eval_ids.items():
        both = sorted(set(ids) & seen)
        if both:
            raise LeakError(f"--pretrained {enc.path}: {len(both)} of this run's {side} images were among the "
                            f"images it was pretrained on: {preview(both)}; pretrain on this split's train pool "
                            "(lesionlab pretrain DATA_DIR) instead")
