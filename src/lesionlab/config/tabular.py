"""`lesionlab tabular`'s config: a gradient-boosted model on the metadata, optionally fused with an image model."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..choices import EngineName, FusionName
from ..errors import shown
from ..metrics import ThresholdRule
from .base import validated


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
    # offset is the default because it never lost to stack or late on out-of-fold images, on either data set
    # or size measured (docs/results.md, transfer sections' "With the metadata"), and keeps the image scores' order
    fusion: Optional[FusionName] = Field(None, description="with --image (default offset): offset = the trees start "
                                         "from the image score's logit and learn only what the metadata adds; stack = "
                                         "image scores as features; late = rank average of image and metadata-only "
                                         "probabilities")
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
        if self.fusion is not None and not self.image:
            raise ValueError(f"--fusion {self.fusion} needs --image CV_DIR (the image model to fuse with)")
        if self.image and self.fusion is None:
            self.fusion = "offset"  # validate_assignment runs this check once more, with fusion set
        return self


def build_tabular_config(values: dict, origin: str = "flags") -> TabularConfig:
    return validated(TabularConfig, values, origin)

