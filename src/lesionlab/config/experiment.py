"""The experiment config of train, cv, sweep and tune: one validated object, read from YAML and/or
flags, saved with the run.

Every key is also a CLI flag (`batch_size` -> `--batch-size`); an unknown key is refused with
the closest known one. Allowed values come from choices.py (one list each), which the CLI and the
modules that implement them read too. What a key is besides its type (its bare-flag value, whether
a search may vary it, a mapping's flags) is declared on its field (keys.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..choices import CalibrationName, LossName, OptimizerName, PolicyName, SamplerName, SchedulerName, TtaMode
from ..errors import BadInputError, closest
from ..metrics import ThresholdRule
from .base import load_yaml, validated
from .keys import BARE, FIXED, FLAGS, SEARCHABLE, flag_name
from .wording import refuse_bool_for_number


class SyntheticConfig(BaseModel):
    """Synthetic malignant images added to the training draw only."""

    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="SYN_DATA_DIR: a prepared data set of synthetic malignant images (every row "
                      "synthetic=1), added to the training draw only")
    n: Optional[int] = Field(None, ge=1, description="how many synthetic images to add (default: all)")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        return refuse_bool_for_number(cls, v, info)


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("", description="experiment name used as the report's section title", json_schema_extra=FIXED)
    data: str = Field("", description="prepared data set (DATA_DIR) with a split", json_schema_extra=FIXED)
    split: str = Field("", description="split name ('' = split.json, NAME = split-NAME.json)", json_schema_extra=FIXED)
    model: str = Field("simple_cnn", description="model name from the registry (lesionlab models), or timm:NAME")
    pretrained: Union[bool, str] = Field(False, description="ImageNet weights for timm backbones: true (a local copy: timm's "
                                         "cache or hub, else an installed weights package, e.g. lesionlab[weights] for "
                                         "tf_efficientnet_lite0) or a weights file PATH; ENC_DIR, an encoder made by "
                                         "`lesionlab pretrain` (any model); or RUN_DIR, a finished train run of the same "
                                         "model to fine-tune from (see --pretrained-head)",
                                         json_schema_extra={BARE: "true"})
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
        None, description="synthetic malignant images for the training draw: {data: SYN_DATA_DIR, n: N}",
        json_schema_extra={FLAGS: {"data": "synthetic", "n": "synthetic-n"}, SEARCHABLE: False})
    extra_data: str = Field("", description="another prepared data set (DATA_DIR) whose images join the training draw "
                            "only, never validation, test or out-of-fold; refused if it holds copies of those images "
                            "(by id and by content) or has another image size")
    extra_ratio: str = Field("natural", description="malignant:benign ratio drawn from --extra-data: 1:K, or natural "
                             "(all its images, up to --extra-n-malignant malignant ones)")
    extra_n_malignant: Union[int, Literal["all"]] = Field("all", description="malignant images drawn from --extra-data, "
                                                          "or all")
    extra_drop_copies: bool = Field(False, description="drawn --extra-data images whose content copies an evaluation "
                                    "image are left out (each replaced by another of its class, all named in run.json) "
                                    "instead of refusing the run; a copy by id or by patient/lesion is still refused")
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
    ema: float = Field(0.0, ge=0, lt=1, description="weight EMA decay (0 = off; --ema alone = 0.999)",
                       json_schema_extra={BARE: "0.999"})
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
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N", json_schema_extra=FIXED)
    devices: int = Field(1, ge=1, description="processes (CPU cores or GPUs) training one run with DDP",
                         json_schema_extra=FIXED)
    strategy: Literal["auto", "ddp"] = Field("auto", description="auto = ddp when --devices or --num-nodes > 1",
                                             json_schema_extra=FIXED)
    num_nodes: int = Field(1, ge=1, description="machines; more than one is launched by torchrun on each node",
                           json_schema_extra=FIXED)
    bootstrap: int = Field(2000, ge=0, description="bootstrap resamples for the 95%% intervals (0 = none)",
                           json_schema_extra=FIXED)
    eval_batch_size: int = Field(256, ge=1, description="batch size for validation and test")
    num_threads: int = Field(0, ge=0, description="CPU threads for torch (0 = one per core)", json_schema_extra=FIXED)
    measure_compute: bool = Field(False, description="after training, time the model's pure compute on the same "
                                  "batches (extra steps on a copy) and record loop/compute in run.json",
                                  json_schema_extra=FIXED)
    audit: bool = Field(True, description="after training, audit the test set for shortcuts (lesionlab audit: CAM mass "
                        "in the frame and off the lesion, occlusion, artifact strata) into metrics.json's audit block")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        return refuse_bool_for_number(cls, v, info)  # ema: true means 0.999 (its bare-flag value)

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
        from ..metrics import parse_prevalence

        parse_prevalence(v)
        return str(v)

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> str:
        return str(ThresholdRule.parse(v))

    @field_validator("ratio", "extra_ratio", mode="before")
    @classmethod
    def _ratio(cls, v: Any, info: ValidationInfo) -> str:
        from ..data.sampling import parse_ratio

        try:
            parse_ratio(str(v))
        except BadInputError as e:
            raise BadInputError(str(e).replace("--ratio", flag_name(info.field_name or "ratio", cls), 1)) from None
        return str(v).strip().lower()

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        from ..models import get_spec

        get_spec(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        from ..models import get_spec
        from ..runs.encoder_run import is_encoder_dir

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


def build_config(values: dict, origin: str = "config", flag_keys: Collection[str] = ()) -> ExperimentConfig:
    return validated(ExperimentConfig, values, origin, flag_keys)


def resolve(config_file: str | Path | None, overrides: dict) -> ExperimentConfig:
    """YAML file (if any) with flags on top; flags that were not given are left out of `overrides`."""
    values = load_yaml(config_file) if config_file else {}
    origin = str(config_file) if config_file else "flags"
    values.update(overrides)
    return build_config(values, origin, flag_keys=set(overrides))


def to_dict(cfg: ExperimentConfig) -> dict:
    return cfg.model_dump(mode="json")

