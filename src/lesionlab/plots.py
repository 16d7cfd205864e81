"""Figures of a run: confusion matrix and training curves (as in the seed notebook), ROC and PR,
the pretraining curves of an encoder and the synthetic images' distance check. save() is the one way a
figure reaches disk (atomically)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .fileio import atomic_path  # noqa: E402
from .metrics import average_precision, confusion, pauc_above_tpr, pr_curve, roc_auc, roc_curve  # noqa: E402


def save(fig, path: Path, dpi: int = 100) -> None:
    """Write a figure as PNG without leaving half a file, then free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
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
    save(fig, path)


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
    save(fig, path)


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
    save(fig, path)


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
    save(fig, path)


def reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "",
                        n_bins: int = 10) -> None:
    """Observed malignant rate against mean probability per bin (the diagonal is perfect calibration),
    with each curve's ECE and Brier score, over a histogram of the probabilities."""
    from .calibration import brier_score, expected_calibration_error, reliability

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.6, 5.4), height_ratios=(3, 1.2), sharex=True)
    # rare malignant cases keep most probabilities low: zoom to where they are (bins over [0, upper])
    top = max(float(np.quantile(np.asarray(p, dtype=float), 0.995)) for _, p in curves.values())
    upper = min(1.0, max(0.2, np.ceil(top * 10) / 10))
    ax.plot([0, upper], [0, upper], color="grey", lw=0.8, ls=":")
    for name, (y, prob) in curves.items():
        r = reliability(y, prob, n_bins, upper)
        line, = ax.plot(r["mean_prob"], r["observed"], marker="o", ms=4,
                        label=f"{name}: ECE {expected_calibration_error(y, prob):.3f}, Brier {brier_score(y, prob):.3f}")
        hist.hist(np.clip(np.asarray(prob, dtype=float), 0, upper), bins=n_bins, range=(0, upper), histtype="step",
                  color=line.get_color())
    ax.set_ylabel("observed malignant rate")
    ax.set_xlim(0, upper)
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "reliability (dotted: perfect calibration)", fontsize=10)
    if upper < 1:
        hist.set_title(f"probabilities above {upper:g} counted in the last bin", fontsize=7, loc="right", color="grey")
    ax.legend(fontsize=8, loc="upper left")
    hist.set_yscale("log")
    hist.set_xlabel("predicted probability (malignant)")
    hist.set_ylabel("images")
    save(fig, path)


def cam_gallery(rows: list[tuple[str, list[tuple[np.ndarray, np.ndarray, str]]]], path: Path, title: str) -> None:
    """Rows of (image, overlay, caption) pairs, e.g. confident / missed malignant / false positives."""
    pairs = max([len(items) for _, items in rows] + [1])
    ratios = [1, 1, 0.18] * pairs  # image, overlay, gap
    fig, axes = plt.subplots(len(rows), 3 * pairs, figsize=(3.6 * pairs, 2.35 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": ratios, "wspace": 0.04, "hspace": 0.45})
    for axrow, (label, items) in zip(axes, rows):
        for ax in axrow:
            ax.axis("off")
        axrow[0].set_title(label, loc="left", fontsize=10, pad=4)
        if not items:
            axrow[0].text(0, 0.5, "none", fontsize=9, color="grey", transform=axrow[0].transAxes)
        for j, (image, over, caption) in enumerate(items):
            axrow[3 * j].imshow(image)
            axrow[3 * j + 1].imshow(over)
            axrow[3 * j].text(1.02, -0.04, caption.replace("\n", "  "), fontsize=7, ha="center", va="top",
                              transform=axrow[3 * j].transAxes)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


def forest(rows: list[dict], metrics: list[tuple[str, str]], path: Path, baseline: str, title: str = "") -> None:
    """One panel per metric, one line per experiment: the value with its 95% interval (and each
    seed's value as a dot); the baseline's value and interval run down the panel as a band."""
    names = [r["name"] for r in rows]
    n = len(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics) + 2.2, 0.42 * n + 1.4), sharey=True,
                             squeeze=False)
    ys = np.arange(n)[::-1]
    for ax, (key, label) in zip(axes[0], metrics):
        base = next(r for r in rows if r["name"] == baseline)[key]
        if np.isfinite(base["lo"]) and np.isfinite(base["hi"]):
            ax.axvspan(base["lo"], base["hi"], color="tab:blue", alpha=0.12, lw=0)
        ax.axvline(base["mean"], color="tab:blue", lw=0.9, ls="--")
        for y, r in zip(ys, rows):
            v = r[key]
            colour = "tab:blue" if r["name"] == baseline else "black"
            if np.isfinite(v["lo"]) and np.isfinite(v["hi"]):
                ax.plot([v["lo"], v["hi"]], [y, y], color=colour, lw=1.4)
            ax.plot(v["mean"], y, "s", color=colour, ms=5)
            seeds = [s for s in v.get("seeds", []) if np.isfinite(s)]
            if len(seeds) > 1:
                ax.plot(seeds, [y] * len(seeds), ".", color="grey", ms=4, alpha=0.8)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="x", lw=0.4, alpha=0.5)
        ax.tick_params(labelsize=8)
    axes[0][0].set_yticks(ys, names, fontsize=9)
    axes[0][0].set_ylim(-0.7, n - 0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save(fig, path)


def feature_importance(names: list[str], gain: np.ndarray, path: Path, top: int = 25) -> None:
    """Horizontal bars of the largest mean gains (already sorted, largest first)."""
    names, gain = list(names)[:top], np.asarray(gain, dtype=np.float64)[:top]
    total = max(float(np.sum(gain)), 1e-12)
    fig, ax = plt.subplots(figsize=(6.4, 0.28 * len(names) + 1.2))
    ax.barh(np.arange(len(names))[::-1], gain / total, color="tab:blue")
    ax.set_yticks(np.arange(len(names))[::-1], names, fontsize=8)
    ax.set_xlabel(f"share of the top {len(names)} features' gain (mean over folds)")
    ax.set_title("feature importance", fontsize=10)
    save(fig, path)


def ssl_curves(history: list[dict], path: Path) -> None:
    """`lesionlab pretrain`: the SSL loss per epoch, and the encoder's inner-validation kNN and probe scores."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    trained = [r for r in history if r["loss"] is not None]
    a.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], marker=".")
    a.set(xlabel="epoch", ylabel="SSL loss", title="pretraining loss")
    scored = [r for r in history if r.get("knn_roc_auc") is not None]
    for key in ("knn_roc_auc", "probe_roc_auc"):
        b.plot([r["epoch"] for r in scored], [r[key] for r in scored], marker="o", label=key.replace("_", " "))
    b.set(xlabel="epoch", ylabel="inner-val ROC AUC", title="encoder quality")
    b.legend()
    fig.tight_layout()
    save(fig, path, dpi=90)


def distance_histogram(syn: np.ndarray, real: np.ndarray, title: str, path: Path) -> None:
    """`lesionlab synth check`: synthetic images' distances to their nearest real one, beside real-to-real."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = np.linspace(0, max(syn.max(), real.max()) * 1.05, 40).tolist()
    ax.hist(real, bins=bins, alpha=0.6, density=True, label="real -> nearest other real")
    ax.hist(syn, bins=bins, alpha=0.6, density=True, label="synthetic -> nearest real")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("distance")
    ax.legend(fontsize=8)
    save(fig, path)


def audit_summary(boxes: list[tuple[str, dict[str, np.ndarray], float | None]],
                  scatters: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]], path: Path, title: str) -> None:
    """`lesionlab audit`: box plots of per-image CAM shares by outcome (TP, FP, FN, TN), each with the share a
    uniform map would give as a dashed line; then each occlusion's probabilities against the original ones."""
    panels = len(boxes) + len(scatters)
    fig, axes = plt.subplots(1, panels, figsize=(3.9 * panels, 3.6), squeeze=False)
    for ax, (label, groups, uniform) in zip(axes[0], boxes):
        names = list(groups)
        data = [np.asarray(v, dtype=float)[np.isfinite(np.asarray(v, dtype=float))] for v in groups.values()]
        ax.boxplot([d if len(d) else [np.nan] for d in data], showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(names) + 1), [f"{n}\n({len(d)})" for n, d in zip(names, data)], fontsize=8)
        if uniform is not None:
            ax.axhline(uniform, color="grey", lw=0.9, ls="--")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(label + ("\n(dashed: a uniform map)" if uniform is not None else ""), fontsize=9)
    for ax, (label, original, hidden, y) in zip(axes[0][len(boxes):], scatters):
        if y is None:
            ax.scatter(original, hidden, s=5, alpha=0.6)
        else:
            for value, colour, name in ((0, "tab:blue", "benign"), (1, "tab:red", "malignant")):
                sel = np.asarray(y) == value
                ax.scatter(np.asarray(original)[sel], np.asarray(hidden)[sel], s=5, alpha=0.6, color=colour, label=name)
            ax.legend(fontsize=7, loc="upper left")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.7, ls=":")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="probability (original)", ylabel="probability (hidden)")
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.3, top=0.8)  # fixed spacing: tight_layout would draw the figure once more
    save(fig, path)


def image_pair_rows(rows: list[tuple[str, list[tuple[np.ndarray, np.ndarray, str]]]], path: Path, title: str,
                    min_side: int = 96) -> None:
    """Rows of (image, overlay, caption) pairs drawn as one strip per row (one axes each, so hundreds of
    pixels cost what one image does); small images are enlarged by whole pixels to `min_side`."""
    rows = [(label, items) for label, items in rows if items]
    side = max(items[0][0].shape[0] for _, items in rows) if rows else 1
    scale = max(1, -(-min_side // side))
    gap = max(2, scale * side // 24)
    pairs = max([len(items) for _, items in rows] + [1])
    fig, axes = plt.subplots(max(len(rows), 1), 1, figsize=(2.9 * pairs, 2.0 * max(len(rows), 1) + 0.4), squeeze=False)
    for ax, (label, items) in zip(axes[:, 0], rows):
        strip = np.full((scale * side, pairs * (2 * scale * side + 3 * gap), 3), 255, np.uint8)
        for j, (image, over, caption) in enumerate(items):
            x = j * (2 * scale * side + 3 * gap)
            for k, picture in enumerate((image, over)):
                big = np.repeat(np.repeat(np.asarray(picture, np.uint8), scale, axis=0), scale, axis=1)
                h, w = big.shape[:2]
                strip[:h, x + k * (scale * side + gap):x + k * (scale * side + gap) + w] = big
            ax.text(x + scale * side + gap / 2, scale * side + gap, caption.replace("\n", "  "), fontsize=7,
                    ha="center", va="top")
        ax.imshow(strip, interpolation="nearest")
        ax.set_title(label, loc="left", fontsize=9)
        ax.axis("off")
    if not rows:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "none", ha="center", color="grey")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save(fig, path)
