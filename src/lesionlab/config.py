"""The experiment config: one validated object, read from YAML and/or flags, saved with the run.

Every key is also a CLI flag (`batch_size` -> `--batch-size`); an unknown key is refused with
the closest known one. Allowed values come from the modules that implement them (one list each),
and the CLI takes its choices from here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .choices import ENGINES, FUSIONS, LOSSES, OPTIMIZERS, POLICIES, SAMPLERS, SCHEDULERS
from .errors import BadInputError, closest
from .metrics import ThresholdRule


class SyntheticConfig(BaseModel):
    """Synthetic malignant images added to the training draw only."""

    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="a prepared data set of synthetic images (every row synthetic=1)")
    n: Optional[int] = Field(None, ge=1, description="how many to add (default: all)")


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("", description="experiment name used as the report's section title")
    data: str = Field("", description="prepared data set (DATA_DIR) with a split")
    split: str = Field("", description="split name ('' = split.json, NAME = split-NAME.json)")
    model: str = Field("simple_cnn", description="model name from the registry (lesionlab models), or timm:NAME")
    pretrained: Union[bool, str] = Field(False, description="ImageNet weights for timm backbones: true (hub) or a local file PATH")
    ratio: str = Field("1:2", description="malignant:benign ratio of the training draw, 1:K or natural")
    n_malignant: Union[int, Literal["all"]] = Field(293, description="malignant images in the training draw, or all")
    synthetic: Optional[SyntheticConfig] = Field(
        None, description="synthetic malignant images for the training draw: {data: SYN_DATA_DIR, n: N}")
    sampler: Literal[SAMPLERS] = Field(
        "none", description="none = the fixed draw; redraw = fresh benign images each epoch; balanced = class-weighted")
    augment: Literal[POLICIES] = Field("none", description="augmentation policy (training only)")
    epochs: int = Field(20, ge=1, description="training epochs (at most, with early stopping)")
    batch_size: int = Field(32, ge=2, description="training batch size")
    lr: float = Field(1e-4, gt=0, description="learning rate")
    optimizer: Literal[OPTIMIZERS] = Field("adam", description="optimizer")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    scheduler: Literal[SCHEDULERS] = Field("none", description="learning-rate schedule, stepped per batch")
    warmup_epochs: float = Field(0.0, ge=0, description="linear learning-rate warm-up, in epochs")
    loss: Literal[LOSSES] = Field("bce", description="training loss (val/test losses are always plain BCE)")
    pos_weight: Union[float, Literal["auto"], None] = Field(
        None, description="BCE weight of malignant images: a number, or auto = benign/malignant of the training draw")
    focal_alpha: float = Field(0.25, ge=0, le=1, description="focal loss weight of the malignant class")
    focal_gamma: float = Field(2.0, ge=0, description="focal loss focusing exponent")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="label smoothing of the training targets")
    ema: float = Field(0.0, ge=0, lt=1, description="weight EMA decay (0 = off; --ema alone = 0.999)")
    monitor: Literal["val_loss", "val_f1", "val_roc_auc", "val_average_precision", "val_pauc_80"] = Field(
        "val_loss", description="validation metric that picks the checkpoint kept")
    early_stop: Optional[str] = Field(None, description="stop when this validation metric (pauc_80, average_precision, "
                                      "roc_auc, f1, loss) has not improved for --patience epochs; also picks the checkpoint")
    patience: int = Field(5, ge=1, description="epochs without improvement before an early stop")
    threshold: str = Field("0.5", description="decision threshold: a number, val-f1 or sens:X, chosen on validation")
    prevalence: Optional[str] = Field(None, description="deployment prevalence (0.00098, 0.098%% or 50:1000): "
                                      "probabilities are prior-shifted to it and the expected precision there is reported")
    seed: int = Field(0, description="seed of the draw, initialisation, batch order and augmentation")
    precision: Literal["auto", "32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast where the device computes bf16 natively, else fp32")
    channels_last: Literal["auto", "true", "false"] = Field("auto", description="memory format of conv inputs")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    devices: int = Field(1, ge=1, description="processes (CPU cores or GPUs) training one run with DDP")
    strategy: Literal["auto", "ddp"] = Field("auto", description="auto = ddp when --devices or --num-nodes > 1")
    num_nodes: int = Field(1, ge=1, description="machines; more than one is launched by torchrun on each node")
    bootstrap: int = Field(2000, ge=0, description="bootstrap resamples for the 95%% intervals (0 = none)")
    eval_batch_size: int = Field(256, ge=1, description="batch size for validation and test")
    num_threads: int = Field(0, ge=0, description="CPU threads for torch (0 = one per core)")
    measure_compute: bool = Field(False, description="after training, time the model's pure compute on the same "
                                  "batches (extra steps on a copy) and record loop/compute in run.json")

    @field_validator("pretrained", mode="before")
    @classmethod
    def _pretrained(cls, v: Any) -> bool | str:
        if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "false", "no", "0", ""):
            return v.strip().lower() in ("true", "yes", "1")
        return v

    @field_validator("ema", mode="before")
    @classmethod
    def _ema(cls, v: Any) -> Any:
        if isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() in ("true", "false")):
            return 0.999 if str(v).lower() == "true" else 0.0
        return v

    @field_validator("pos_weight", mode="before")
    @classmethod
    def _pos_weight(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("auto", "none", "")):
            return None if v is None or v.strip().lower() in ("none", "") else "auto"
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"--pos-weight must be a number > 0 or 'auto', got '{v}'") from None
        if value <= 0:
            raise ValueError(f"--pos-weight must be > 0 (or 'auto'), got {v}")
        return value

    @field_validator("early_stop", mode="before")
    @classmethod
    def _early_stop(cls, v: Any) -> Any:
        if v is None or str(v).strip().lower() in ("", "none", "false"):
            return None
        name = str(v).strip().lower().removeprefix("val_")
        name = {"ap": "average_precision", "auc": "roc_auc", "pauc": "pauc_80"}.get(name, name)
        known = ("pauc_80", "average_precision", "roc_auc", "f1", "loss")
        if name not in known:
            raise ValueError(f"--early-stop must be one of {', '.join(known)}, got '{v}'{closest(name, known)}")
        return "val_" + name

    @field_validator("prevalence", mode="before")
    @classmethod
    def _prevalence(cls, v: Any) -> Any:
        if v is None or str(v).strip().lower() in ("", "none"):
            return None
        from .metrics import parse_prevalence

        parse_prevalence(v)
        return str(v)

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

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        from .models import get_spec

        if self.pretrained not in (False, "") and not get_spec(self.model).pretrainable:
            raise ValueError(f"--pretrained: '{self.model}' has no pretrained weights; use a timm backbone "
                             "(see `lesionlab models`) or pretrained: false")
        if self.loss == "focal" and self.pos_weight is not None:
            raise ValueError("--pos-weight applies to --loss bce; focal loss weights the classes with --focal-alpha")
        return self

    def resolved_monitor(self) -> str:
        """The validation metric that picks the checkpoint: early_stop's metric when set."""
        return self.early_stop or self.monitor


KEYS = tuple(ExperimentConfig.model_fields)


def _explain(err: ValidationError, origin: str, model: type[BaseModel] | None = None) -> BadInputError:
    model = model or ExperimentConfig
    keys = tuple(model.model_fields)
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'{closest(key, keys)}")
        elif e["type"] == "literal_error":
            known = [str(k) for k in model.model_fields[key].annotation.__args__]
            got = str(e.get("input"))
            lines.append(f"unknown {key} '{got}'{closest(got, known)}; known: {', '.join(known)}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] in ("value_error", "assertion_error") and "--" in msg:
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


class TabularConfig(BaseModel):
    """`lesionlab tabular`: a gradient-boosted model on the metadata, optionally fused with an image model."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("", description="experiment name used as the report's section title")
    data: str = Field(description="prepared data set (DATA_DIR) with a split")
    split: str = Field("", description="split name ('' = split.json, NAME = split-NAME.json)")
    features: str = Field("auto", description="auto = every usable metadata column, or COL,COL,...")
    allow_column: list[str] = Field(default_factory=list, description="columns kept although their single-column "
                                    "training AUC exceeds 0.98 (recorded in the run)")
    engine: Literal[ENGINES] = Field("lightgbm", description="gradient-boosting library")
    folds: Optional[int] = Field(None, ge=2, description="grouped stratified folds over the train pool (default 5; "
                                 "with --image: the image model's folds)")
    image: Optional[str] = Field(None, description="CV_DIR (or ENS_DIR) of an image model: its out-of-fold scores "
                                 "become features")
    fusion: Literal[FUSIONS] = Field("stack", description="with --image: stack = image scores as features; late = "
                                     "rank average of image and metadata-only probabilities")
    neg_ratio: Optional[float] = Field(None, gt=0, description="benign rows per malignant row in each fold's "
                                       "training part (negative undersampling; default: all)")
    recipe: bool = Field(True, description="ISIC 2024 feature recipe and patient statistics where the columns allow")
    threshold: str = Field("val-f1", description="decision threshold: a number, val-f1 or sens:X, chosen on validation")
    learning_rate: float = Field(0.05, gt=0, description="boosting learning rate")
    max_rounds: int = Field(2000, ge=1, description="boosting rounds at most (early stopping picks fewer)")
    early_stopping: int = Field(100, ge=1, description="rounds without improvement on the inner validation part")
    min_child_samples: int = Field(20, ge=1, description="fewest rows in a leaf (LightGBM; min_child_weight for XGBoost, "
                                   "min_data_in_leaf for CatBoost)")
    bootstrap: int = Field(2000, ge=0, description="bootstrap resamples for the 95%% intervals (0 = none)")
    seed: int = Field(0, description="seed of the folds, undersampling and the engine")
    num_threads: int = Field(0, ge=0, description="engine threads (0 = one per core)")

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> str:
        return str(ThresholdRule.parse(v))

    @model_validator(mode="after")
    def _consistent(self) -> "TabularConfig":
        if self.fusion == "late" and not self.image:
            raise ValueError("--fusion late needs --image CV_DIR (the image model to fuse with)")
        return self


def build_tabular_config(values: dict, origin: str = "flags") -> TabularConfig:
    try:
        return TabularConfig(**values)
    except ValidationError as e:
        raise _explain(e, origin, TabularConfig) from None
    except BadInputError as e:
        raise BadInputError(f"{origin}: {e}") from None
