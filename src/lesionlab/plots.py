"""Figures of a run: confusion matrix and training curves (as in the seed notebook), ROC and PR."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .fileio import atomic_path  # noqa: E402
from .metrics import average_precision, confusion, pauc_above_tpr, pr_curve, roc_auc, roc_curve  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def confusion_matrix(y: np.ndarray, prob: np.ndarray, threshold: float, path: Path, title: str) -> None:
    c = confusion(y, prob >= threshold)
    grid = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=13,
                color="white" if v > grid.max() / 2 else "black")
    ax.set_xticks([0, 1], ["benign", "malignant"])
    ax.set_yticks([0, 1], ["benign", "malignant"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (threshold {threshold:.3g})", fontsize=10)
    _save(fig, path)


def training_curves(history: list[dict], path: Path, best_epoch: int | None = None) -> None:
    epochs = [r["epoch"] for r in history]
    panels = [("loss", "loss"), ("accuracy", "accuracy"), ("f1", "F1 at 0.5"), ("average_precision", "average precision")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for ax, (key, label) in zip(axes, panels):
        for side, style in (("train", "-"), ("val", "--")):
            ax.plot(epochs, [r[f"{side}_{key}"] for r in history], style, marker=".", label=side)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
    _save(fig, path)


def roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    for name, (y, prob) in curves.items():
        fpr, tpr, _ = roc_curve(y, prob)
        ax.plot(fpr, tpr, label=f"{name}: AUC {roc_auc(y, prob):.3f}, pAUC80 {pauc_above_tpr(y, prob):.3f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.7, ls=":")
    ax.axhline(0.8, color="tab:red", lw=0.7, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC (pAUC80: area above the red line)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def precision_recall(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    for name, (y, prob) in curves.items():
        precision, recall, _ = pr_curve(y, prob)
        line, = ax.step(np.r_[0, recall], np.r_[precision[0], precision], where="post",
                        label=f"{name}: AP {average_precision(y, prob):.3f}")
        ax.axhline(np.mean(y), color=line.get_color(), lw=0.7, ls=":")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall (dotted: prevalence)", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def feature_importance(names: list[str], gain: np.ndarray, path: Path, top: int = 25) -> None:
    """Horizontal bars of the largest mean gains (already sorted, largest first)."""
    names, gain = list(names)[:top], np.asarray(gain, dtype=np.float64)[:top]
    total = max(float(np.sum(gain)), 1e-12)
    fig, ax = plt.subplots(figsize=(6.4, 0.28 * len(names) + 1.2))
    ax.barh(np.arange(len(names))[::-1], gain / total, color="tab:blue")
    ax.set_yticks(np.arange(len(names))[::-1], names, fontsize=8)
    ax.set_xlabel(f"share of the top {len(names)} features' gain (mean over folds)")
    ax.set_title("feature importance", fontsize=10)
    _save(fig, path)
