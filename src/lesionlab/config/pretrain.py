"""`lesionlab pretrain`'s config: self-supervised pretraining of a registry model's encoder."""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..choices import SslMethod
from .base import validated
from .experiment import ExperimentConfig
from .keys import BARE


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
                                         "weights file PATH, found as for train), i.e. continued pretraining",
                                         json_schema_extra={BARE: "true"})
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
        from ..models import get_spec

        get_spec(v)
        return v

    @field_validator("pretrained", mode="before")
    @classmethod
    def _pretrained(cls, v: Any) -> bool | str:
        return ExperimentConfig._pretrained(v)

    @model_validator(mode="after")
    def _consistent(self) -> "PretrainConfig":
        from ..models import get_spec

        if self.pretrained not in (False, "") and not get_spec(self.model).pretrainable:
            raise ValueError(f"--pretrained: '{self.model}' has no ImageNet weights; use a timm backbone (see "
                             "`lesionlab models`) or pretrained: false")
        return self


def build_pretrain_config(values: dict, origin: str = "flags") -> PretrainConfig:
    return validated(PretrainConfig, values, origin)

