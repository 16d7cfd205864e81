"""The run-folder format: file names, kinds and version, declared once.

A run folder is a directory of plain files. Every kind has config.yaml, run.json and
metrics.json (written last: its presence marks the folder complete); run.json carries
{"format": {"version": N, "kind": KIND}} so that readers know what they hold.

    train     one trained model: + predictions.csv, history.csv, train_draw.csv, checkpoint.pt, figures/
    cv        K-fold cross-validation: + oof.csv, folds/K/ (each a train run), fold-ensemble predictions
    ensemble  several members' probabilities averaged: + members.json, predictions.csv
    tabular   a gradient-boosted model on metadata (optionally fused with image scores): + predictions.csv,
              oof.csv (train pool, out of fold), importance.csv, model/ (fold models + model.json), figures/
"""
from __future__ import annotations

FORMAT_VERSION = 1
KINDS = ("train", "cv", "ensemble", "tabular")

CONFIG = "config.yaml"
INFO = "run.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
HISTORY = "history.csv"
TRAIN_DRAW = "train_draw.csv"
CHECKPOINT = "checkpoint.pt"
FIGURES_DIR = "figures"

REQUIRED = (CONFIG, INFO, METRICS)

# figure key -> (file name, caption); the writer draws them, the report shows them in this order
FIGURES = {
    "confusion_val": ("confusion_val.png", "validation confusion matrix"),
    "confusion_test": ("confusion_test.png", "test confusion matrix"),
    "curves": ("training_curves.png", "training curves"),
    "roc": ("roc.png", "ROC"),
    "pr": ("pr.png", "precision-recall"),
    "importance": ("importance.png", "feature importance (gain)"),
}
REPORT_FIGURES = ("confusion_test", "curves", "roc", "pr", "importance")


def format_block(kind: str) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown run kind '{kind}'; known: {', '.join(KINDS)}")
    return {"version": FORMAT_VERSION, "kind": kind}
