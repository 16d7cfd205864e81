"""Metrics as plain numpy functions, each checked against scikit-learn in the tests.

Written here rather than called from scikit-learn because the bootstrap evaluates them
thousands of times per run, and because the ISIC 2024 pAUC needs the scorer's exact recipe.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .calibration import brier_score, ece_brier_resampled, expected_calibration_error
from .errors import BadInputError

METRIC_KEYS = ("loss", "accuracy", "precision", "recall", "f1", "specificity", "balanced_accuracy",
               "roc_auc", "average_precision", "pauc_80", "ece", "brier", "threshold")
RANKING_KEYS = ("roc_auc", "average_precision", "pauc_80")
HIGHER_IS_BETTER = {k: k not in ("loss", "ece", "brier") for k in METRIC_KEYS}


def _check(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int8).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length ({len(y)} vs {len(s)})")
    return y, s


def roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, from (0, 0) up, as sklearn's
    roc_curve(drop_intermediate=False). Needs both classes."""
    y, s = _check(y, s)
    npos = int(y.sum())
    if npos == 0 or npos == len(y):
        raise ValueError("the ROC curve needs both classes; got only one")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(y, s)
    return float(np.trapezoid(tpr, fpr))


def pr_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at every distinct score, highest threshold first."""
    y, s = _check(y, s)
    if y.sum() == 0:
        raise ValueError("the precision-recall curve needs at least one positive")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return precision, recall, s[last]


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """sum_k (R_k - R_{k-1}) P_k over distinct thresholds, as sklearn's average_precision_score."""
    precision, recall, _ = pr_curve(y, s)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pauc_above_tpr(y: np.ndarray, s: np.ndarray, min_tpr: float = 0.8) -> float:
    """ISIC 2024's partial AUC: the area of the ROC region above TPR = min_tpr (0 .. 1-min_tpr).

    The official scorer's recipe: flip labels and scores, take the ROC curve, cut it at
    FPR' = 1 - min_tpr with linear interpolation and integrate (no McClish standardisation).
    """
    y, s = _check(y, s)
    max_fpr = 1.0 - min_tpr
    fpr, tpr, _ = roc_curve(1 - y, 1.0 - s)
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))
    if stop >= len(fpr):  # the curve ends at fpr = 1 >= max_fpr, so this only guards rounding
        return float(np.trapezoid(tpr, fpr))
    x_interp, y_interp = [fpr[stop - 1], fpr[stop]], [tpr[stop - 1], tpr[stop]]
    tpr_cut = np.r_[tpr[:stop], np.interp(max_fpr, x_interp, y_interp)]
    fpr_cut = np.r_[fpr[:stop], max_fpr]
    return float(np.trapezoid(tpr_cut, fpr_cut))


def bce_per_sample(y: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each sample, computed from logits (stable for extreme scores)."""
    y = np.asarray(y, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def confusion(y: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    y = np.asarray(y).astype(bool)
    pred = np.asarray(pred).astype(bool)
    return {"tn": int((~y & ~pred).sum()), "fp": int((~y & pred).sum()),
            "fn": int((y & ~pred).sum()), "tp": int((y & pred).sum())}


def _rates(tp, fp, tn, fn):
    """Threshold metrics from counts (scalars or arrays); 0 where a ratio has no denominator,
    as sklearn's zero_division=0."""
    tp, fp, tn, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, tn, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    accuracy = (tp + tn) / (tp + fp + tn + fn)
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1,
            "specificity": specificity, "balanced_accuracy": (recall + specificity) / 2}


def parse_prevalence(value: float | str) -> float:
    """0.00098, '0.098%' or '50:1000' (malignant:benign counts) -> a prevalence in (0, 1)."""
    text = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)", text)
    try:
        if m:
            p = float(m.group(1)) / (float(m.group(1)) + float(m.group(2)))
        elif text.endswith("%"):
            p = float(text[:-1]) / 100
        else:
            p = float(text)
    except (ValueError, ZeroDivisionError):
        p = -1.0
    if not 0 < p < 1:
        raise BadInputError(f"--prevalence must be a share in (0, 1), a percentage such as 0.098% or "
                            f"MALIGNANT:BENIGN counts such as 50:1000, got '{value}'")
    return p


def prior_shift(prob: np.ndarray, from_prevalence: float, to_prevalence: float) -> np.ndarray:
    """Re-weigh calibrated probabilities from the prevalence the model was trained at to another
    (Saerens et al. 2002): posterior odds scale by the ratio of prior odds."""
    prob = np.clip(np.asarray(prob, dtype=np.float64), 1e-12, 1 - 1e-12)
    factor = (to_prevalence / (1 - to_prevalence)) / (from_prevalence / (1 - from_prevalence))
    odds = prob / (1 - prob) * factor
    return odds / (1 + odds)


def precision_at_prevalence(recall, specificity, prevalence: float):
    """Expected precision (PPV) where malignant cases make up `prevalence` of those screened."""
    recall, specificity = np.asarray(recall, dtype=np.float64), np.asarray(specificity, dtype=np.float64)
    tp, fp = recall * prevalence, (1 - specificity) * (1 - prevalence)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tp + fp > 0, tp / (tp + fp), 0.0)


def compute_metrics(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5,
                    losses: np.ndarray | None = None, prevalence: float | None = None) -> dict[str, float]:
    """Every metric of METRIC_KEYS for one set of predictions (positive = prob >= threshold);
    with a deployment `prevalence`, also the precision expected there."""
    y, prob = _check(y, prob)
    c = confusion(y, prob >= threshold)
    out = {"loss": float(np.mean(losses)) if losses is not None else float("nan")}
    out.update({k: float(v) for k, v in _rates(c["tp"], c["fp"], c["tn"], c["fn"]).items()})
    if prevalence is not None:
        out["precision_at_prevalence"] = float(precision_at_prevalence(out["recall"], out["specificity"], prevalence))
    both = 0 < y.sum() < len(y)
    out["roc_auc"] = roc_auc(y, prob) if both else float("nan")
    out["average_precision"] = average_precision(y, prob) if y.sum() > 0 else float("nan")
    out["pauc_80"] = pauc_above_tpr(y, prob) if both else float("nan")
    out["ece"] = expected_calibration_error(y, prob)
    out["brier"] = brier_score(y, prob)
    out["threshold"] = float(np.mean(threshold))  # one per image for out-of-fold predictions
    return out


def bootstrap_ci(y: np.ndarray, prob: np.ndarray, threshold, losses: np.ndarray | None = None,
                 n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                 prevalence: float | None = None, groups: np.ndarray | None = None) -> dict[str, list[float]]:
    """Percentile intervals of every metric over stratified bootstrap resamples (positives and
    negatives resampled separately, so every resample has both classes). With `groups` (one key per
    image: patient or lesion) whole groups are resampled, stratified by whether a group holds a
    malignant image, since images of one lesion are not independent. `threshold` may be one value
    or one per image (out-of-fold predictions, each fold with its own)."""
    return bootstrap_ci_mean(y, [prob], [threshold], [losses] if losses is not None else None, n_boot, seed, level,
                             prevalence, groups)


def bootstrap_ci_mean(y: np.ndarray, probs: list, thresholds: list, losses: list | None = None, n_boot: int = 2000,
                      seed: int = 0, level: float = 0.95, prevalence: float | None = None,
                      groups: np.ndarray | None = None) -> dict[str, list[float]]:
    """As bootstrap_ci for several predictions of the same images (the repeats of a cross-validation):
    each resample scores every one on the same images and takes their mean."""
    y = np.asarray(y).astype(np.int8).ravel()
    idx = resample_indices(y, n_boot, seed, groups)
    per = [_bootstrap_samples(y, p, t, None if losses is None else losses[k], idx, prevalence)
           for k, (p, t) in enumerate(zip(probs, thresholds))]
    samples = {key: np.mean([s[key] for s in per], axis=0) for key in per[0]}
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    out = {k: [float(np.nanquantile(v, lo)), float(np.nanquantile(v, hi))] if np.isfinite(v).any()
           else [float("nan")] * 2 for k, v in samples.items()}
    thr = float(np.mean([np.mean(t) for t in thresholds]))
    out["threshold"] = [thr, thr]
    return {k: out[k] for k in (*METRIC_KEYS, "precision_at_prevalence") if k in out}


def _bootstrap_samples(y: np.ndarray, prob: np.ndarray, threshold, losses: np.ndarray | None, idx,
                       prevalence: float | None) -> dict[str, np.ndarray]:
    """Every metric on every resample; `idx` is an (n_boot, n) array or a list of index arrays."""
    y, prob = _check(y, prob)
    above = prob >= np.asarray(threshold, dtype=np.float64)  # one threshold, or one per image
    n_boot = len(idx)
    if isinstance(idx, np.ndarray):
        yb, pb = y[idx].astype(bool), above[idx]
        counts = ((yb & pb).sum(1), (~yb & pb).sum(1), (~yb & ~pb).sum(1), (yb & ~pb).sum(1))
        loss = losses[idx].mean(1) if losses is not None else np.full(n_boot, np.nan)
    else:  # resampled groups: resamples differ in length
        c = np.array([[(yb & pb).sum(), (~yb & pb).sum(), (~yb & ~pb).sum(), (yb & ~pb).sum()]
                      for yb, pb in ((y[i].astype(bool), above[i]) for i in idx)])
        counts = tuple(c.T)
        loss = np.array([losses[i].mean() for i in idx]) if losses is not None else np.full(n_boot, np.nan)
    rates = _rates(*counts)
    samples: dict[str, np.ndarray] = dict(rates)
    samples["loss"] = loss
    if prevalence is not None:
        samples["precision_at_prevalence"] = precision_at_prevalence(rates["recall"], rates["specificity"], prevalence)
    samples.update(_ranking_samples(y, prob, idx))
    if isinstance(idx, np.ndarray):
        samples.update(ece_brier_resampled(y, prob, idx))
    else:
        samples["ece"] = np.array([expected_calibration_error(y[i], prob[i]) for i in idx])
        samples["brier"] = np.array([brier_score(y[i], prob[i]) for i in idx])
    return samples


def stratified_resamples(y: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) index arrays; each keeps the number of positives and negatives."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    parts = [grp[rng.integers(0, len(grp), size=(n_boot, len(grp)))] for grp in (pos, neg) if len(grp)]
    return np.concatenate(parts, axis=1)


def grouped_resamples(y: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """n_boot index arrays, each the images of whole groups drawn with replacement: as many groups
    holding a malignant image as there are, and as many without; lengths vary with group sizes."""
    y = np.asarray(y).astype(np.int8).ravel()
    groups = np.asarray(groups).ravel()
    if len(groups) != len(y):
        raise ValueError(f"labels and groups differ in length ({len(y)} vs {len(groups)})")
    _, inv = np.unique(groups, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    sizes = np.bincount(inv)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    has_pos = np.bincount(inv, weights=y) > 0
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(has_pos), np.flatnonzero(~has_pos)]
    drawn = np.concatenate([g[rng.integers(0, len(g), size=(n_boot, len(g)))] for g in strata if len(g)], axis=1)
    out = []
    for row in drawn:
        n = sizes[row]
        offsets = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        out.append(order[np.repeat(starts[row], n) + offsets])
    return out


def resample_indices(y: np.ndarray, n_boot: int, seed: int, groups: np.ndarray | None = None):
    """Per-image stratified resamples, or whole-group ones where the images have groups."""
    if groups is None:
        return stratified_resamples(np.asarray(y), n_boot, seed)
    return grouped_resamples(y, groups, n_boot, seed)


def _ranking_samples(y: np.ndarray, prob: np.ndarray, idx) -> dict[str, np.ndarray]:
    if not 0 < y.sum() < len(y):
        return {k: np.full(len(idx), np.nan) for k in RANKING_KEYS}
    funcs = {"roc_auc": roc_auc, "average_precision": average_precision, "pauc_80": pauc_above_tpr}
    return {k: np.array([f(y[i], prob[i]) for i in idx]) for k, f in funcs.items()}


def _as_list(v) -> list[np.ndarray]:
    """One prediction (1-D) or several of the same images, as a list of float64 arrays."""
    return [np.asarray(v, dtype=np.float64)] if np.ndim(v) == 1 else [np.asarray(p, dtype=np.float64) for p in v]


def paired_bootstrap(y: np.ndarray, probs_a, probs_b, thresholds_a, thresholds_b,
                     metrics=("roc_auc", "average_precision", "pauc_80", "f1"), n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95, groups: np.ndarray | None = None,
                     strata: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """B - A on the same resampled test images, with a percentile interval.

    Each side may be one run or several (seeds): a side's value is then the mean over its runs of
    the metric, each run scored on the same resampled images, so the interval reflects the test
    images' sampling for the seed-averaged metric. With `groups`, whole groups are resampled (see
    bootstrap_ci). A threshold may be one value per run or, for out-of-fold predictions, an array
    with one value per image.

    With `strata` (e.g. each out-of-fold image's fold), a side's value is the mean over strata of
    the metric on each stratum's images, and each stratum is resampled on its own: a fold's images
    are only ever ranked against each other, as its own models scored them.
    """
    def thresholds(t, k):
        if isinstance(t, (list, tuple)):
            return [np.asarray(x, dtype=np.float64) for x in t]
        return [np.asarray(t, dtype=np.float64)] * k

    pa, pb = _as_list(probs_a), _as_list(probs_b)
    ta, tb = thresholds(thresholds_a, len(pa)), thresholds(thresholds_b, len(pb))
    y = np.asarray(y).astype(np.int8)
    blocks = [np.arange(len(y))] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    draws = [resample_indices(y[b], n_boot, seed + k, None if groups is None else groups[b]) for k, b in enumerate(blocks)]
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2

    def side_value(m, probs, thresholds, rows):
        return float(np.mean([np.mean([compute_metric(m, y[r], p[r], t[r] if t.ndim else t) for r in rows])
                              for p, t in zip(probs, thresholds)]))

    out = {}
    for m in metrics:
        a, b = side_value(m, pa, ta, blocks), side_value(m, pb, tb, blocks)
        diffs = []
        for i in range(n_boot):
            rows = [block[d[i]] for block, d in zip(blocks, draws)]
            diffs.append(side_value(m, pb, tb, rows) - side_value(m, pa, ta, rows))
        out[m] = {"a": a, "b": b, "diff": b - a, "lo": float(np.quantile(diffs, lo)),
                  "hi": float(np.quantile(diffs, hi)), "p_b_not_better": float(np.mean(np.array(diffs) <= 0))}
    return out


def ci_unit(groups_rule: str | None) -> str:
    """What the bootstrap resampled, for metrics.json: 'image', or the group column."""
    return groups_rule if groups_rule and groups_rule != "none" else "image"


def compute_metric(name: str, y: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> float:
    if name == "roc_auc":
        return roc_auc(y, prob)
    if name == "average_precision":
        return average_precision(y, prob)
    if name == "pauc_80":
        return pauc_above_tpr(y, prob)
    c = confusion(y, prob >= threshold)
    return float(_rates(c["tp"], c["fp"], c["tn"], c["fn"])[name])


# ---------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class ThresholdRule:
    """'0.5' (a fixed value), 'val-f1' (max F1 on validation) or 'sens:0.9' (target sensitivity)."""

    kind: str  # fixed | f1 | sensitivity
    value: float = 0.5

    @classmethod
    def parse(cls, text: str | float) -> "ThresholdRule":
        t = str(text).strip().lower()
        if t in ("val-f1", "f1", "max-f1"):
            return cls("f1")
        m = re.fullmatch(r"(?:sens|sensitivity):\s*([0-9.]+)", t)
        if m:
            v = float(m.group(1))
            if not 0 < v < 1:
                raise BadInputError(f"--threshold {text}: the target sensitivity must lie in (0, 1), got {v}")
            return cls("sensitivity", v)
        try:
            v = float(t)
        except ValueError:
            raise BadInputError(f"--threshold must be a number in (0, 1), 'val-f1' or 'sens:X' "
                                f"(e.g. sens:0.9), got '{text}'") from None
        if not 0 < v < 1:
            raise BadInputError(f"--threshold {text}: a fixed threshold must lie in (0, 1)")
        return cls("fixed", v)

    def __str__(self) -> str:
        return {"fixed": f"{self.value:g}", "f1": "val-f1", "sensitivity": f"sens:{self.value:g}"}[self.kind]

    def choose(self, y_val: np.ndarray, prob_val: np.ndarray) -> float:
        """The threshold, chosen on validation predictions only."""
        if self.kind == "fixed":
            return self.value
        precision, recall, scores = pr_curve(y_val, prob_val)
        if self.kind == "f1":
            with np.errstate(invalid="ignore", divide="ignore"):
                f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
            k = int(np.argmax(f1))
        else:
            k = int(np.flatnonzero(recall >= self.value - 1e-12)[0])
        # midway to the next lower score: the same decisions on validation, less brittle after
        return float((scores[k] + scores[k + 1]) / 2) if k + 1 < len(scores) else float(scores[k])


def logit(prob: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def metrics_with_ci(y: np.ndarray, probs, thresholds, n_boot: int = 2000, seed: int = 0,
                    groups: np.ndarray | None = None, unit: str = "image", prevalence: float | None = None) -> dict:
    """compute_metrics for predictions that were scored elsewhere (out-of-fold, ensembles), with
    the loss from their probabilities and bootstrap intervals that resample whole groups where
    `unit` names a group rule. `probs` may hold several predictions of the same images (the
    repeats of a cross-validation): every value is then their mean, and each resample scores all
    of them. A threshold may be one value or one per image."""
    y = np.asarray(y).astype(np.int8)
    probs = _as_list(probs)
    if not isinstance(thresholds, (list, tuple)):
        thresholds = [thresholds] * len(probs)
    losses = [bce_per_sample(y, logit(p)) for p in probs]
    per = [compute_metrics(y, p, t, loss, prevalence) for p, t, loss in zip(probs, thresholds, losses)]
    m: dict = {k: float(np.mean([d[k] for d in per])) for k in per[0]}
    grouped = groups is not None and unit != "image"
    if n_boot:
        m["ci95"] = bootstrap_ci_mean(y, probs, list(thresholds), losses, n_boot, seed, prevalence=prevalence,
                                      groups=groups if grouped else None)
        m["ci95_unit"] = unit if grouped else "image"
    m["n_malignant"], m["n_benign"] = int(y.sum()), int((y == 0).sum())
    if grouped and groups is not None:
        m["n_groups"] = int(len(np.unique(groups)))
    return m
