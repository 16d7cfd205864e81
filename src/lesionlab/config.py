"""The experiment config: one validated object, read from YAML and/or flags, saved with the run.

Every key is also a CLI flag (`batch_size` -> `--batch-size`); an unknown key is refused with
the closest known one. Allowed values come from choices.py (one list each), which the CLI and the
modules that implement them read too.
"""
from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Collection, Literal, Optional, TypeVar, Union

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from .choices import (CalibrationName, EngineName, FusionName, LossName, OptimizerName, PolicyName, SamplerName, SchedulerName,
                      SslMethod, TtaMode)
from .errors import BadInputError, closest, shown
from .fileio import read_yaml
from .metrics import ThresholdRule


def _is_number_type(annotation: Any) -> bool:
    """int or float, alone or in a Union (Optional[int], Union[int, Literal['all']], ...)."""
    if annotation in (int, float):
        return True
    return typing.get_origin(annotation) in (Union, types.UnionType) and any(
        _is_number_type(a) for a in typing.get_args(annotation))


def _refuse_bool_for_number(model: type[BaseModel], v: Any, info: ValidationInfo, allowed: tuple[str, ...] = ()) -> Any:
    """pydantic reads `epochs: true` as 1 epoch; a boolean where a number belongs is a mistake
    (numeric strings, as flags give them, are still read as numbers)."""
    name = info.field_name  # always set in a field validator
    if isinstance(v, bool) and name is not None and name not in allowed and \
            _is_number_type(model.model_fields[name].annotation):
        raise PydanticCustomError("bool_not_number", "a boolean is not a number")
    return v


class SyntheticConfig(BaseModel):
    """Synthetic malignant images added to the training draw only."""

    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="a prepared data set of synthetic images (every row synthetic=1)")
    n: Optional[int] = Field(None, ge=1, description="how many to add (default: all)")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        return _refuse_bool_for_number(cls, v, info)


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("", description="experiment name used as the report's section title")
    data: str = Field("", description="prepared data set (DATA_DIR) with a split")
    split: str = Field("", description="split name ('' = split.json, NAME = split-NAME.json)")
    model: str = Field("simple_cnn", description="model name from the registry (lesionlab models), or timm:NAME")
    pretrained: Union[bool, str] = Field(False, description="ImageNet weights for timm backbones: true (a local copy: timm's "
                                         "cache or hub, else an installed weights package, e.g. lesionlab[weights] for "
                                         "tf_efficientnet_lite0) or a weights file PATH; ENC_DIR, an encoder made by "
                                         "`lesionlab pretrain` (any model); or RUN_DIR, a finished train run of the same "
                                         "model to fine-tune from (see --pretrained-head)")
    pretrained_head: Literal["keep", "fresh"] = Field("keep", description="--pretrained RUN_DIR: keep = start from the "
                                                      "run's classifier head too; fresh = a newly initialised head")
    encoder_lr_mult: float = Field(1.0, gt=0, le=10, description="learning rate of the encoder (all but the classifier "
                                   "head) as a multiple of --lr; below 1 fine-tunes pretrained weights gently")
    linear_probe_epochs: int = Field(0, ge=0, description="first epochs that train the classifier head only, the "
                                     "encoder's weights held fixed (a linear-probe warm-up for --pretrained)")
    layer_decay: float = Field(1.0, gt=0, le=1, description="layer-wise learning-rate decay: each layer group below "
                               "the head trains at this factor times the one above it (timm's layer groups: stem, each "
                               "block, ...; 1 = off; 0.7-0.9 is usual for fine-tuning pretrained weights)")
    batchnorm: Literal["train", "frozen"] = Field("train", description="BatchNorm layers while training: train = batch "
                                                  "statistics and affine weights learn as usual; frozen = running "
                                                  "statistics and affine weights stay as loaded (small batches, "
                                                  "pretrained weights)")
    input_size: int = Field(0, ge=0, description="side of the model's input in pixels: the data set's images are "
                            "enlarged to it on the fly (the pretrained model's interpolation, else bilinear), in "
                            "training and by predict, explain and export; 0 = the data set's size")
    ratio: str = Field("1:2", description="malignant:benign ratio of the training draw, 1:K or natural")
    n_malignant: Union[int, Literal["all"]] = Field(293, description="malignant images in the training draw, or all")
    synthetic: Optional[SyntheticConfig] = Field(
        None, description="synthetic malignant images for the training draw: {data: SYN_DATA_DIR, n: N}")
    extra_data: str = Field("", description="another prepared data set (DATA_DIR) whose images join the training draw "
                            "only, never validation, test or out-of-fold; refused if it holds copies of those images "
                            "(by id and by content) or has another image size")
    extra_ratio: str = Field("natural", description="malignant:benign ratio drawn from --extra-data: 1:K, or natural "
                             "(all its images, up to --extra-n-malignant malignant ones)")
    extra_n_malignant: Union[int, Literal["all"]] = Field("all", description="malignant images drawn from --extra-data, "
                                                          "or all")
    sampler: SamplerName = Field(
        "none", description="none = the fixed draw; redraw = fresh benign images each epoch; balanced = class-weighted")
    augment: PolicyName = Field("none", description="augmentation policy (training only)")
    epochs: int = Field(20, ge=1, description="training epochs (at most, with early stopping)")
    batch_size: int = Field(32, ge=2, description="training batch size")
    lr: float = Field(1e-4, gt=0, description="learning rate")
    optimizer: OptimizerName = Field("adam", description="optimizer")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    scheduler: SchedulerName = Field("none", description="learning-rate schedule, stepped per batch")
    warmup_epochs: float = Field(0.0, ge=0, description="linear learning-rate warm-up, in epochs")
    loss: LossName = Field("bce", description="training loss (val/test losses are always plain BCE)")
    pos_weight: Union[float, Literal["auto"], None] = Field(
        None, description="BCE weight of malignant images: a number, or auto = benign/malignant of the training draw")
    focal_alpha: float = Field(0.25, ge=0, le=1, description="focal loss weight of the malignant class")
    focal_gamma: float = Field(2.0, ge=0, description="focal loss focusing exponent")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="label smoothing of the training targets")
    mixup: float = Field(0.0, ge=0, le=10, description="mixup: blend each training image and its target with another "
                         "of the batch, weight ~ Beta(alpha, alpha) per image (0 = off; 0.2-0.4 is usual)")
    ema: float = Field(0.0, ge=0, lt=1, description="weight EMA decay (0 = off; --ema alone = 0.999)")
    monitor: Literal["val_loss", "val_f1", "val_roc_auc", "val_average_precision", "val_pauc_80"] = Field(
        "val_loss", description="validation metric that picks the checkpoint kept")
    early_stop: Optional[str] = Field(None, description="stop when this validation metric (pauc_80, average_precision, "
                                      "roc_auc, f1, loss) has not improved for --patience epochs; also picks the checkpoint")
    patience: int = Field(5, ge=1, description="epochs without improvement before an early stop")
    threshold: str = Field("0.5", description="decision threshold: a number, val-f1 or sens:X, chosen on validation")
    prevalence: Optional[str] = Field(None, description="deployment prevalence (0.00098, 0.098%% or 50:1000): "
                                      "probabilities are prior-shifted to it and the expected precision there is reported")
    tta: TtaMode = Field(
        "none", description="test-time augmentation of the final val/test (and out-of-fold) scores and of predict: "
        "none, flip (4 flips) or d4 (8 flips and quarter turns); logits averaged")
    calibrate: CalibrationName = Field(
        "none", description="calibrate probabilities on validation only (temperature scaling or isotonic regression); "
        "applied before the --prevalence prior shift, and by predict and export")
    seed: int = Field(0, description="seed of the draw, initialisation, batch order and augmentation")
    precision: Literal["auto", "32", "bf16", "64"] = Field(
        "auto", description="auto = bf16 autocast where the device computes bf16 natively, else fp32; 64 = float64 "
                            "throughout (slow; for checking numerics, e.g. that N processes train as 1 does)")
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
    audit: bool = Field(True, description="after training, audit the test set for shortcuts (lesionlab audit: CAM mass "
                        "in the frame and off the lesion, occlusion, artifact strata) into metrics.json's audit block")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        return _refuse_bool_for_number(cls, v, info, allowed=("ema",))  # ema: true means 0.999 (documented)

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
        if isinstance(v, bool):  # float(True) would be 1.0
            raise ValueError(f"--pos-weight must be a number > 0 or 'auto', got {str(v).lower()}")
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

    @field_validator("ratio", "extra_ratio", mode="before")
    @classmethod
    def _ratio(cls, v: Any, info: ValidationInfo) -> str:
        from .data.sampling import parse_ratio

        try:
            parse_ratio(str(v))
        except BadInputError as e:
            raise BadInputError(str(e).replace("--ratio", _flag(info.field_name or "ratio"), 1)) from None
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
        from .runs.encoder_run import is_encoder_dir

        if self.pretrained not in (False, "") and not get_spec(self.model).pretrainable \
                and not is_encoder_dir(self.pretrained):
            raise ValueError(f"--pretrained: '{self.model}' has no pretrained weights; use a timm backbone "
                             "(see `lesionlab models`), an ENC_DIR made by `lesionlab pretrain`, or pretrained: false")
        if self.loss == "focal" and self.pos_weight is not None:
            raise ValueError("--pos-weight applies to --loss bce; focal loss weights the classes with --focal-alpha")
        if not self.extra_data and (self.extra_ratio != "natural" or self.extra_n_malignant != "all"):
            raise ValueError("--extra-ratio and --extra-n-malignant say what to draw from --extra-data DATA_DIR; "
                             "give it, or leave them out")
        if self.pretrained_head == "fresh" and not is_encoder_dir(self.pretrained):
            raise ValueError("--pretrained-head fresh applies to --pretrained RUN_DIR (a finished train run); "
                             f"--pretrained is {self.pretrained!r}")
        return self

    def resolved_monitor(self) -> str:
        """The validation metric that picks the checkpoint: early_stop's metric when set."""
        return self.early_stop or self.monitor


KEYS = tuple(ExperimentConfig.model_fields)


class PretrainConfig(BaseModel):
    """`lesionlab pretrain`: self-supervised pretraining of a registry model's encoder."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="prepared data set with a split: its train pool is pretrained on")
    split: str = Field("", description="split name ('' = split.json)")
    pretrain_data: str = Field("", description="another prepared data set to pretrain on instead (all its images, "
                               "labels unused; refused if it holds any of the split's val or test images)")
    method: SslMethod = Field("simclr", description="self-supervised method (lightly)")
    model: str = Field("upgraded_cnn", description="registry model whose encoder (all but the head) is pretrained")
    pretrained: Union[bool, str] = Field(False, description="start from ImageNet weights (timm backbones: true or a "
                                         "weights file PATH, found as for train), i.e. continued pretraining")
    size: int = Field(0, ge=0, description="image side in pixels (0 = the data set's)")
    epochs: int = Field(10, ge=1, description="passes over the pretraining images (10: about 15 min on a 2-core "
                        "CPU at 128 px for upgraded_cnn; SSL usually wants 100+ on a GPU)")
    batch_size: int = Field(64, ge=4, description="images per step (each seen as 2 or more views)")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (cosine schedule)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_epochs: float = Field(1.0, ge=0, description="linear learning-rate warm-up, in epochs")
    local_views: int = Field(2, ge=0, description="DINO: small crops at half size per image, besides the 2 global views")
    temperature: float = Field(0.2, gt=0, description="SimCLR: NT-Xent temperature")
    inner_val: float = Field(0.1, gt=0, lt=0.5, description="share of the train pool's groups held out from "
                             "pretraining to score the encoder (kNN and linear probe; at most 1000 images)")
    eval_every: int = Field(0, ge=0, description="epochs between quality scores (0 = about 5 over the run)")
    knn_k: int = Field(20, ge=1, description="neighbours of the kNN score")
    seed: int = Field(0, description="seed of the inner split, initialisation, batch order and views")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    precision: Literal["auto", "32", "bf16"] = Field("auto", description="as for train")
    num_threads: int = Field(0, ge=0, description="CPU threads for torch (0 = one per core)")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        from .models import get_spec

        get_spec(v)
        return v

    @field_validator("pretrained", mode="before")
    @classmethod
    def _pretrained(cls, v: Any) -> bool | str:
        return ExperimentConfig._pretrained(v)

    @model_validator(mode="after")
    def _consistent(self) -> "PretrainConfig":
        from .models import get_spec

        if self.pretrained not in (False, "") and not get_spec(self.model).pretrainable:
            raise ValueError(f"--pretrained: '{self.model}' has no ImageNet weights; use a timm backbone (see "
                             "`lesionlab models`) or pretrained: false")
        return self


def build_pretrain_config(values: dict, origin: str = "flags") -> PretrainConfig:
    return _validated(PretrainConfig, values, origin, tuple(values) if origin == "flags" else ())


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds (itself, or inside an Optional/Union), if any."""
    return next((a for a in (annotation, *typing.get_args(annotation))
                 if isinstance(a, type) and issubclass(a, BaseModel)), None)


def _field(loc: tuple, config: type[BaseModel] | None = None) -> tuple[str, Any]:
    """(dotted key, pydantic FieldInfo or None) of an error location such as ('synthetic', 'n') or
    ('n_malignant', 'int') (a Union's branch tag after the key), in `config` (default ExperimentConfig)."""
    model: Any = config or ExperimentConfig
    parts, field = [], None
    for part in loc:
        fields = getattr(model, "model_fields", {}) if isinstance(model, type) else {}
        if part not in fields:
            break  # a Union branch, list index, ...: the key is what came before
        parts.append(str(part))
        field = fields[part]
        model = _nested_model(field.annotation)
    return ".".join(parts), field


def _known_keys(loc: tuple, config: type[BaseModel] | None = None) -> tuple[str, ...]:
    """The keys known where an unknown key sits: the config's, or a nested mapping's."""
    keys = tuple((config or ExperimentConfig).model_fields)
    _, parent = _field(tuple(loc)[:-1], config)
    if parent is None:
        return keys
    nested = _nested_model(parent.annotation)
    return tuple(nested.model_fields) if nested else keys


def _describe(annotation: Any) -> str:
    """What a type accepts, in words: 'an integer', 'one of adam, adamw, sgd', 'an integer or 'all''."""
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "text"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping with keys " + ", ".join(annotation.model_fields)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return f"'{args[0]}'" if len(args) == 1 else "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    return str(annotation)


_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "<="),
           (annotated_types.Lt, "lt", "<"))


def _expected(field: Any) -> str:
    """The field's type with its bounds, e.g. 'an integer >= 1' or 'a number >= 0 and < 0.5'."""
    bounds = [f"{sign} {getattr(m, attr)}" for m in field.metadata for kind, attr, sign in _BOUNDS if isinstance(m, kind)]
    optional = type(None) in typing.get_args(field.annotation)
    return (_describe(field.annotation) + (" " + " and ".join(bounds) if bounds else "")
            + (" (or nothing)" if optional else ""))


def _shown(value: Any) -> str:
    """A value as the user typed it: true/false, 'text', numbers as they are."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return shown(value)
    if value is None:
        return "nothing"
    return shown(value)


def _flag(key: str) -> str:
    return "--" + {"synthetic.data": "synthetic", "synthetic.n": "synthetic-n"}.get(key, key).replace("_", "-")


def _explain_key(key: str, field: Any, errors: list[ErrorDetails], where: str, config: type[BaseModel] | None = None) -> str:
    """One message for all of a key's errors (a Union gives one per branch): the key, what it
    expects and what it got."""
    first = errors[0]
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'{closest(key.rsplit('.', 1)[-1], _known_keys(first['loc'], config))}"
    for e in errors:
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] in ("value_error", "assertion_error") and "--" in msg:
            return msg  # our own validators' messages already name the parameter, expected and got
    got = "nothing" if first["type"] == "missing" else _shown(first.get("input"))
    if field is None:  # the config as a whole (a model validator) or an unknown location
        msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in errors)
        return f"{where}: {msgs} (got {got})"
    hint = ""
    if any(e["type"] == "literal_error" for e in errors) and isinstance(first.get("input"), str):
        known = [str(a) for a in typing.get_args(field.annotation) if typing.get_origin(field.annotation) is Literal]
        hint = closest(first["input"], known)
    return f"{where}: expected {_expected(field)}, got {got}{hint}"


def _explain(err: ValidationError, origin: str, flag_keys: Collection[str] = (),
             config: type[BaseModel] | None = None) -> BadInputError:
    """Every pydantic error, whatever its type, as 'KEY: expected X, got Y', KEY in the form the
    user wrote it: --flag-name for flags, config key 'name' in ORIGIN for a file."""
    by_key: dict[str, tuple[Any, list[ErrorDetails]]] = {}
    for e in err.errors():
        key, field = _field(tuple(e["loc"]), config)
        if e["type"] == "extra_forbidden":
            key = ".".join(str(p) for p in e["loc"])
        by_key.setdefault(key or "config", (field, []))[1].append(e)
    lines = []
    for key, (field, errors) in by_key.items():
        from_flags = origin == "flags" or key.split(".")[0] in flag_keys
        where = _flag(key) if from_flags else f"{origin}: config key '{key}'"
        if field is None:  # the config as a whole: no key to name
            where = origin
        line = _explain_key(key, field, errors, where, config)
        unknown = errors[0]["type"] == "extra_forbidden"
        if unknown or not (from_flags or line.startswith(where)):
            line = f"{origin}: {line}"  # say which file (or 'flags') an unknown key or our own message is about
        lines.append(line)
    return BadInputError("; ".join(lines))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    data = read_yaml(path, "config file") or {}
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: a config must be a mapping of keys to values")
    return data


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def _validated(model: type[ConfigT], values: dict, origin: str, flag_keys: Collection[str]) -> ConfigT:
    """One config model validated, its errors in the one template (_explain); flag_keys: the keys
    that came from flags (named --like-this in errors)."""
    try:
        return model(**values)
    except ValidationError as e:
        raise _explain(e, origin, flag_keys, model) from None
    except BadInputError as e:  # raised inside a validator
        raise BadInputError(f"{origin}: {e}") from None


def build_config(values: dict, origin: str = "config", flag_keys: Collection[str] = ()) -> ExperimentConfig:
    return _validated(ExperimentConfig, values, origin, flag_keys)


def resolve(config_file: str | Path | None, overrides: dict) -> ExperimentConfig:
    """YAML file (if any) with flags on top; flags that were not given are left out of `overrides`."""
    values = load_yaml(config_file) if config_file else {}
    origin = str(config_file) if config_file else "flags"
    values.update(overrides)
    return build_config(values, origin, flag_keys=set(overrides))


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
    engine: EngineName = Field("lightgbm", description="gradient-boosting library")
    folds: Optional[int] = Field(None, ge=2, description="grouped stratified folds over the train pool (default 5; "
                                 "with --image: the image model's folds)")
    image: Optional[str] = Field(None, description="CV_DIR (or ENS_DIR) of an image model: its out-of-fold scores "
                                 "become features")
    fusion: FusionName = Field("stack", description="with --image: stack = image scores as features; late = "
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

    @field_validator("features")
    @classmethod
    def _features(cls, v: str) -> str:
        if not [c for c in v.split(",") if c.strip()]:
            raise ValueError(f"--features must be auto or column names such as age,sex (COL,COL,...), got {shown(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "TabularConfig":
        if self.fusion == "late" and not self.image:
            raise ValueError("--fusion late needs --image CV_DIR (the image model to fuse with)")
        return self


def build_tabular_config(values: dict, origin: str = "flags") -> TabularConfig:
    return _validated(TabularConfig, values, origin, tuple(values) if origin == "flags" else ())
