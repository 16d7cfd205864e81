"""The run-folder format: file names, kinds and version, declared once.

A run folder is a directory of plain files. Every kind has config.yaml, run.json and
metrics.json (written last: its presence marks the folder complete); run.json carries
{"format": {"version": N, "kind": KIND}} so that readers know what they hold.

    train     one trained model: + predictions.csv, history.csv, train_draw.csv, checkpoint.pt, figures/, and
              audit.csv (the shortcut audit of its test set, one row per image; summary in metrics.json's audit)
    cv        K-fold cross-validation: + cv_plan.json and folds.csv (written first: the config and the fold
              assignment a resumed cv must match), folds/K/ (each a train run), oof.csv, cv.json, and
              predictions.csv of the fold ensemble on the split's val and test
    ensemble  several members' probabilities averaged: + members.json, predictions.csv
    tabular   a gradient-boosted model on metadata (optionally fused with image scores): + predictions.csv,
              oof.csv (train pool, out of fold), importance.csv, model/ (fold models + model.json), figures/
    encoder   a self-supervised pretrained encoder (lesionlab pretrain): + encoder.pt, history.csv,
              pretrain_ids.csv (the images it was pretrained on); `train --pretrained ENC_DIR` loads it

Each kind is declared in the registry (kinds.py) by the module it lives in, with its files, report
figures, predictor loader and what that scores (images or rows).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import FormatBlock

FORMAT_VERSION = 1

CONFIG = "config.yaml"
INFO = "run.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
HISTORY = "history.csv"
TRAIN_DRAW = "train_draw.csv"
CHECKPOINT = "checkpoint.pt"
FIGURES_DIR = "figures"
CV_PLAN = "cv_plan.json"
FOLDS_TABLE = "folds.csv"
FOLDS_DIR = "folds"
OOF = "oof.csv"
CV_SUMMARY = "cv.json"
MEMBERS = "members.json"
ENCODER = "encoder.pt"
PRETRAIN_IDS = "pretrain_ids.csv"
AUDIT_TABLE = "audit.csv"

REQUIRED = (CONFIG, INFO, METRICS)

# figure key -> (file name, caption); the writer draws them, the report shows them in this order
FIGURES = {
    "confusion_val": ("confusion_val.png", "validation confusion matrix"),
    "confusion_test": ("confusion_test.png", "test confusion matrix"),
    "curves": ("training_curves.png", "training curves"),
    "roc": ("roc.png", "ROC"),
    "pr": ("pr.png", "precision-recall"),
    "oof_roc": ("oof_roc.png", "out-of-fold ROC"),
    "oof_pr": ("oof_pr.png", "out-of-fold precision-recall"),
    "reliability": ("reliability.png", "reliability diagram (calibration)"),
    "cam_gallery": ("cam_gallery.png", "Grad-CAM gallery of the test set"),
    "importance": ("importance.png", "feature importance (gain)"),
    # the shortcut audit's (lesionlab.audit); the report shows those its metrics.json audit block names
    "audit_shares": ("audit_shares.png", "shortcut audit: CAM shares by outcome, occlusions"),
    "audit_gallery": ("audit_gallery.png", "shortcut audit: most CAM mass off the lesion"),
}
REPORT_FIGURES = ("confusion_test", "curves", "roc", "pr", "reliability", "cam_gallery", "importance")
CV_REPORT_FIGURES = ("oof_roc", "oof_pr", "roc", "pr", "confusion_test")
ENSEMBLE_REPORT_FIGURES = ("roc", "pr", "confusion_test")


def format_block(kind: str) -> FormatBlock:
    """run.json's "format" entry (the writer checks the kind is declared, kinds.py)."""
    return {"version": FORMAT_VERSION, "kind": kind}
