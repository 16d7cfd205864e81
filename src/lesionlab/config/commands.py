"""The settings of predict, ensemble and explain: small config models, so that their flags and their
errors come the same way as train's (cli/options.py makes a flag of every field; a bad value is one
line naming the flag, what it expects and what it got). The run folders and inputs they act on
(RUN_DIR, SOURCE, MEMBERS, --out) are the command's arguments, not settings."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..choices import CamMethod, EnsembleMean, FormatName, PredictEngine, PredictFormat, TtaMode
from ..data.images import DEFAULT_MAX_PIXELS
from ..metrics import ThresholdRule

MAX_PIXELS_HELP = ("images whose header states more pixels (width x height) are unreadable, refused before decoding "
                   "(a decompression bomb); raise it for huge images you trust")


class CommandConfig(BaseModel):
    """A command's settings: unknown keys refused, a boolean never read as a number."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: Any) -> Any:
        from .wording import refuse_bool_for_number

        return refuse_bool_for_number(cls, v, info)


class PredictConfig(CommandConfig):
    """`lesionlab predict RUN_DIR SOURCE --out CSV`."""

    format: PredictFormat = Field("auto", description="layout of SOURCE; kaggle: SOURCE is any layout with ISIC ids (the "
                                  "competition's test-metadata.csv + test-image.hdf5) and the CSV is the competition's "
                                  "submission file, isic_id,target")
    skip_bad: bool = Field(False, description="skip unreadable images instead of stopping")
    overwrite: bool = Field(False, description="replace an existing output file")
    workers: int = Field(0, ge=0, description="decoding processes (0 = one per core)")
    batch_size: int = Field(256, ge=1, description="images per forward pass")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description=MAX_PIXELS_HELP)
    tta: Optional[TtaMode] = Field(None, description="test-time augmentation (default: what the run recorded)")
    engine: PredictEngine = Field("torch", description="onnxruntime: RUN_DIR is a MODEL.onnx from `lesionlab export`, "
                                  "scored without torch")


class EnsembleConfig(CommandConfig):
    """`lesionlab ensemble MEMBER... --out ENS_DIR`."""

    mean: EnsembleMean = Field("prob", description="average the probabilities, or the logits (a geometric mean of "
                               "the odds)")
    tta: Optional[TtaMode] = Field(None, description="test-time augmentation for every member (default: each "
                                   "member's own)")
    threshold: Optional[str] = Field(None, description="rule for the ensemble's threshold, chosen on val: a number, "
                                     "val-f1 or sens:X (default: the first member's)")
    data: Optional[str] = Field(None, description="DATA_DIR, if it moved since the members were trained")
    name: str = Field("", description="name in reports (default: ENS_DIR's name)")
    n_boot: int = Field(2000, ge=0, description="bootstrap resamples for the 95%% intervals (0 = none)")
    seed: int = Field(0, description="seed of the bootstrap")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    batch_size: int = Field(256, ge=1, description="images per forward pass")

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> Any:
        if v is not None:
            ThresholdRule.parse(v)  # a bad rule is refused here, before any member is loaded
        return v


class ExplainConfig(CommandConfig):
    """`lesionlab explain RUN_DIR SOURCE --out DIR`."""

    method: CamMethod = Field("gradcam", description="class-activation method (pytorch-grad-cam)")
    target_layer: Optional[str] = Field(None, description="module path of the layer the CAM weighs (default: the model "
                                        "registry's, e.g. relu1 for simple_cnn, features.14 for upgraded_cnn, layer4 "
                                        "for resnet18)")
    format: FormatName = Field("auto", description="layout of SOURCE")
    overwrite: bool = Field(False, description="replace an earlier explain output in DIR (nothing else is replaced)")
    batch_size: int = Field(16, ge=1, description="images per CAM batch")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
