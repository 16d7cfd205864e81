"""Allowed values of every enumerated parameter, declared once: the config model, the CLI's
choices and the modules that implement them all read these (no torch import here, so the
command line starts fast).

Those a config field takes are declared as Literal types (what a type checker and pydantic read) and
their tuples derived from them, so that each list of values is still written once."""
from __future__ import annotations

from typing import Literal, get_args

FITS = ("stretch", "crop", "pad")
FormatName = Literal["auto", "manifest", "isic2024", "isic2024-permissive", "isic-csv", "folders", "images"]
FORMATS: tuple[str, ...] = get_args(FormatName)
# predict also writes the ISIC 2024 Kaggle competition's submission file (isic_id,target) for any input with ISIC ids
PredictFormat = Literal[FormatName, "kaggle"]
PREDICT_FORMATS: tuple[str, ...] = get_args(PredictFormat)
PredictEngine = Literal["torch", "onnxruntime"]  # onnxruntime: a file `lesionlab export` wrote, scored without torch
GROUP_CHOICES = ("auto", "patient_id", "lesion_id", "none")
PolicyName = Literal["none", "light", "medium", "heavy"]
POLICIES: tuple[str, ...] = get_args(PolicyName)
SamplerName = Literal["none", "redraw", "balanced"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
LossName = Literal["bce", "focal"]
LOSSES: tuple[str, ...] = get_args(LossName)
OptimizerName = Literal["adam", "adamw", "sgd"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
SchedulerName = Literal["none", "cosine", "onecycle"]
SCHEDULERS: tuple[str, ...] = get_args(SchedulerName)
TtaMode = Literal["none", "flip", "d4"]
TTA_MODES: tuple[str, ...] = get_args(TtaMode)
EnsembleMean = Literal["prob", "logit"]
ENSEMBLE_MEANS: tuple[str, ...] = get_args(EnsembleMean)
CamMethod = Literal["gradcam", "gradcam++", "scorecam"]  # explain and audit (pytorch-grad-cam)
CAM_METHODS: tuple[str, ...] = get_args(CamMethod)
GeneratorKind = Literal["projected", "gan", "ddpm"]  # lesionlab synth train (synth/generator.py)
ClassName = Literal["malignant", "benign"]  # a class by name, as synth's --label takes it
CalibrationName = Literal["none", "temperature", "isotonic"]
CALIBRATIONS: tuple[str, ...] = get_args(CalibrationName)
EngineName = Literal["lightgbm", "xgboost", "catboost"]  # lightgbm is a dependency; the others are optional extras
ENGINES: tuple[str, ...] = get_args(EngineName)
FusionName = Literal["stack", "late", "offset"]  # how a tabular run uses an image model's scores (--image)
FUSIONS: tuple[str, ...] = get_args(FusionName)
SslMethod = Literal["simclr", "byol", "dino"]  # lesionlab pretrain (engine/ssl.py, on lightly)
SSL_METHODS: tuple[str, ...] = get_args(SslMethod)
DEMO_SAMPLES = ("isic2024-permissive", "ham10000")  # lesionlab demo --sample; the first is the default
COMPARE_ON = ("auto", "oof", "test")  # lesionlab compare: out-of-fold images (cv, tabular) or the test images
INTERPOLATIONS = ("bilinear", "bicubic")  # how --input-size enlarges the store's images (engine/runtime.py)
