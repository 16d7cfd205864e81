"""The experiment config: one validated object, read from YAML and/or flags, saved with the run.

Every key is also a CLI flag (`batch_size` -> `--batch-size`); an unknown key is refused with
the closest known one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import BadInputError, closest
from .metrics import ThresholdRule


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("", description="experiment name used as the report's section title")
    data: str = Field("", description="prepared data set (DATA_DIR) with a split")
    split: str = Field("", description="split name ('' = split.json, NAME = split-NAME.json)")
    model: str = Field("simple_cnn", description="model name from the registry")
    ratio: str = Field("1:2", description="malignant:benign ratio of the training draw, 1:K or natural")
    n_malignant: Union[int, Literal["all"]] = Field(293, description="malignant images in the training draw, or all")
    epochs: int = Field(20, ge=1, description="training epochs")
    batch_size: int = Field(32, ge=2, description="training batch size")
    lr: float = Field(1e-4, gt=0, description="learning rate")
    optimizer: Literal["adam"] = Field("adam", description="optimizer")
    monitor: Literal["val_loss", "val_f1", "val_roc_auc", "val_average_precision", "val_pauc_80"] = Field(
        "val_loss", description="validation metric that picks the checkpoint kept")
    threshold: str = Field("0.5", description="decision threshold: a number, val-f1 or sens:X, chosen on validation")
    seed: int = Field(0, description="seed of the draw, initialisation and batch order")
    precision: Literal["auto", "32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast where the device computes bf16 natively, else fp32")
    channels_last: Literal["auto", "true", "false"] = Field("auto", description="memory format of conv inputs")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    bootstrap: int = Field(2000, ge=0, description="bootstrap resamples for the 95%% intervals (0 = none)")
    eval_batch_size: int = Field(256, ge=1, description="batch size for validation and test")
    num_threads: int = Field(0, ge=0, description="CPU threads for torch (0 = one per core)")

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> str:
        return str(ThresholdRule.parse(v))

    @field_validator("ratio", mode="before")
    @classmethod
    def _ratio(cls, v: Any) -> str:
        from .data.sampling import parse_ratio

        parse_ratio(str(v))
        return str(v).strip().lower()

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        from .models import get_spec

        get_spec(v)
        return v


KEYS = tuple(ExperimentConfig.model_fields)


def _explain(err: ValidationError, origin: str) -> BadInputError:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'{closest(key, KEYS)}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "value_error" and "--" in msg:
                lines.append(msg)  # our own messages already name the parameter
            else:
                lines.append(f"config key '{key}': {msg} (got {e.get('input')!r})")
    return BadInputError(f"{origin}: " + "; ".join(lines))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise BadInputError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise BadInputError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: a config must be a mapping of keys to values")
    return data


def build_config(values: dict, origin: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig(**values)
    except ValidationError as e:
        raise _explain(e, origin) from None
    except BadInputError as e:  # raised inside a validator
        raise BadInputError(f"{origin}: {e}") from None


def resolve(config_file: str | Path | None, overrides: dict) -> ExperimentConfig:
    """YAML file (if any) with flags on top; flags that were not given are left out of `overrides`."""
    values = load_yaml(config_file) if config_file else {}
    origin = str(config_file) if config_file else "flags"
    values.update(overrides)
    return build_config(values, origin)


def to_dict(cfg: ExperimentConfig) -> dict:
    return cfg.model_dump(mode="json")
