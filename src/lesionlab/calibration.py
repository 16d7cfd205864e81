"""Do the probabilities mean what they say? Expected calibration error, Brier score, reliability
data, and calibration maps fitted on validation only (temperature scaling, isotonic regression).

A fitted map is a plain dict (stored in run.json and the checkpoint) that `apply_calibration`
turns logits into probabilities with, using numpy alone, so that predict, export and the ONNX
graph apply exactly what the run fitted:

    {"method": "temperature", "temperature": T, "offset": b}      p = sigmoid(z / T + b)
    {"method": "isotonic", "x": [logit knots], "y": [probabilities]}   p = piecewise-linear in z

Both map to probabilities at the prevalence of the set they were fitted on (validation). A model
trained on a draw at another prevalence (1:2 = 33% malignant, or odds scaled by pos_weight)
differs from validation in its base rate as well as in its confidence; that known difference is
the constant `offset` = logit(val prevalence) - logit(training prevalence), so that the one
fitted parameter, T, only corrects over- or under-confidence. A deployment prevalence
(--prevalence) is then reached by the prior shift from the validation prevalence.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import BadInputError

METHODS = ("none", "temperature", "isotonic")
ECE_BINS = 15


def _arrays(y, prob) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    prob = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != prob.shape:
        raise ValueError(f"labels and probabilities differ in length ({len(y)} vs {len(prob)})")
    return y, prob


def brier_score(y, prob) -> float:
    """Mean squared difference between the probability and the 0/1 label."""
    y, prob = _arrays(y, prob)
    return float(np.mean((prob - y) ** 2)) if len(y) else float("nan")


def bin_index(prob: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Equal-width bins over [0, 1]: bin k holds (k/n, (k+1)/n], bin 0 also holds 0."""
    return np.clip(np.ceil(np.asarray(prob, dtype=np.float64) * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def expected_calibration_error(y, prob, n_bins: int = ECE_BINS) -> float:
    """sum over equal-width bins of (share of images in the bin) x |malignant rate - mean probability|."""
    y, prob = _arrays(y, prob)
    if not len(y):
        return float("nan")
    b = bin_index(prob, n_bins)
    gap = np.bincount(b, weights=y - prob, minlength=n_bins)
    return float(np.abs(gap).sum() / len(y))


def ece_brier_resampled(y: np.ndarray, prob: np.ndarray, idx: np.ndarray, n_bins: int = ECE_BINS
                        ) -> dict[str, np.ndarray]:
    """ECE and Brier of every bootstrap resample (rows of `idx`), vectorised."""
    y, prob = _arrays(y, prob)
    n_boot, n = idx.shape
    diff = (y - prob)[idx]
    rows = np.repeat(np.arange(n_boot), n) * n_bins + bin_index(prob, n_bins)[idx].ravel()
    gaps = np.bincount(rows, weights=diff.ravel(), minlength=n_boot * n_bins).reshape(n_boot, n_bins)
    return {"ece": np.abs(gaps).sum(1) / n, "brier": (diff ** 2).mean(1)}


def reliability(y, prob, n_bins: int = 10, upper: float = 1.0) -> dict[str, np.ndarray]:
    """Per equal-width bin over [0, upper] (probabilities above fall in the last bin): mean probability,
    observed malignant rate and count, empty bins left out."""
    y, prob = _arrays(y, prob)
    b = bin_index(prob / upper, n_bins)
    count = np.bincount(b, minlength=n_bins)
    keep = count > 0
    mean_prob = np.bincount(b, weights=prob, minlength=n_bins)[keep] / count[keep]
    rate = np.bincount(b, weights=y, minlength=n_bins)[keep] / count[keep]
    centers = (np.arange(n_bins) + 0.5) / n_bins * upper
    return {"bin_center": centers[keep], "mean_prob": mean_prob, "observed": rate, "count": count[keep]}


# ---------------------------------------------------------------- fitting and applying maps


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def nll(y, logits) -> float:
    """Mean binary cross-entropy of labels under sigmoid(logits) (stable for extreme logits)."""
    y, z = _arrays(y, logits)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def nll_of_probabilities(y, prob, eps: float = 1e-7) -> float:
    y, prob = _arrays(y, prob)
    prob = np.clip(prob, eps, 1 - eps)
    return float(-np.mean(y * np.log(prob) + (1 - y) * np.log1p(-prob)))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def check_two_classes(y, method: str) -> None:
    y = np.asarray(y).ravel()
    n_pos = int((y == 1).sum())
    if n_pos == 0 or n_pos == len(y):
        held = "malignant" if n_pos else "benign"
        raise BadInputError(f"--calibrate {method}: the validation set holds only {held} images ({len(y)} of them); "
                            "calibration is fitted on validation and needs both classes. Re-split with malignant and "
                            "benign validation images (lesionlab split --val M:B) or use --calibrate none")


def fit_temperature(logits, y, offset: float = 0.0) -> float:
    """T > 0 minimising the NLL of y under sigmoid(logits / T + offset), by a bounded 1-D search on log T."""
    from scipy.optimize import minimize_scalar

    y, z = _arrays(y, logits)
    check_two_classes(y, "temperature")
    res = minimize_scalar(lambda log_t: nll(y, z / math.exp(log_t) + offset), bounds=(-6.0, 6.0), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


def fit_isotonic(logits, y) -> dict:
    """A non-decreasing map from logit to probability (scikit-learn's IsotonicRegression), as knots."""
    from sklearn.isotonic import IsotonicRegression

    y, z = _arrays(y, logits)
    check_two_classes(y, "isotonic")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(z, y)
    return {"x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_]}


def fit_calibration(method: str, logits, y, train_prevalence: float) -> dict | None:
    """Fit `method` on validation logits and labels; the map with what it did to validation NLL."""
    if method not in METHODS:
        raise BadInputError(f"--calibrate must be one of {', '.join(METHODS)}, got '{method}'")
    if method == "none":
        return None
    y, z = _arrays(y, logits)
    check_two_classes(y, method)
    val_prevalence = float(y.mean())
    offset = logit(val_prevalence) - logit(train_prevalence)
    if method == "temperature":
        cal = {"method": "temperature", "temperature": fit_temperature(z, y, offset), "offset": offset}
    else:
        cal = {"method": "isotonic", **fit_isotonic(z, y)}
    cal.update({"fitted_on": "val", "n": int(len(y)), "prevalence": val_prevalence,
                "val_nll_model": nll(y, z), "val_nll_prior_corrected": nll(y, z + offset),
                "val_nll_calibrated": nll_of_probabilities(y, apply_calibration(z, cal))})
    return cal


def apply_calibration(logits, cal: dict | None) -> np.ndarray:
    """Probabilities from logits through a fitted map (plain sigmoid when there is none)."""
    z = np.asarray(logits, dtype=np.float64)
    if not cal:
        return _sigmoid(z)
    if cal["method"] == "temperature":
        return _sigmoid(z / cal["temperature"] + cal.get("offset", 0.0))
    if cal["method"] == "isotonic":
        return np.interp(z, np.asarray(cal["x"], np.float64), np.asarray(cal["y"], np.float64))
    raise BadInputError(f"unknown calibration method '{cal['method']}' in this run; known: temperature, isotonic")


def isotonic_segments(z, x, y):
    """np.interp(z, x, y) (clipped at both ends) written as a sum of clamped segments, so that the
    same arithmetic runs on torch tensors and exports to ONNX without a search operator."""
    out = z * 0 + float(y[0])
    for x0, x1, y0, y1 in zip(x[:-1], x[1:], y[:-1], y[1:]):
        if y1 != y0:
            out = out + ((z - float(x0)) / float(x1 - x0)).clip(0, 1) * float(y1 - y0)
    return out
