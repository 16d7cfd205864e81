"""Allowed values of every enumerated parameter, declared once: the config model, the CLI's
choices and the modules that implement them all read these (no torch import here, so the
command line starts fast)."""
from __future__ import annotations

FITS = ("stretch", "crop", "pad")
FORMATS = ("auto", "manifest", "isic2024", "isic2024-permissive", "isic-csv", "folders", "images")
# predict also writes the ISIC 2024 Kaggle competition's submission file (isic_id,target) for any input with ISIC ids
PREDICT_FORMATS = (*FORMATS, "kaggle")
GROUP_CHOICES = ("auto", "patient_id", "lesion_id", "none")
POLICIES = ("none", "light", "medium", "heavy")
SAMPLERS = ("none", "redraw", "balanced")
LOSSES = ("bce", "focal")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "onecycle")
TTA_MODES = ("none", "flip", "d4")
ENSEMBLE_MEANS = ("prob", "logit")
CALIBRATIONS = ("none", "temperature", "isotonic")
ENGINES = ("lightgbm", "xgboost", "catboost")  # lightgbm is a dependency; the others are optional extras
FUSIONS = ("stack", "late")  # how a tabular run uses an image model's scores (--image)
SSL_METHODS = ("simclr", "byol", "dino")  # lesionlab pretrain (engine/ssl.py, on lightly)
DEMO_SAMPLES = ("isic2024-permissive", "ham10000")  # lesionlab demo --sample; the first is the default
COMPARE_ON = ("auto", "oof", "test")  # lesionlab compare: out-of-fold images (cv, tabular) or the test images
INTERPOLATIONS = ("bilinear", "bicubic")  # how --input-size enlarges the store's images (engine/runtime.py)
