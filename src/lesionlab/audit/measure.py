"""Measure one predictor on a set of images: where its CAM's mass lies (the outer frame, off the
lesion), what hiding the frame or everything off the lesion does to its probabilities and ranking,
and its metrics on images with and without each artifact (and per institution or any other column).

Everything works on the images as the model sees them (the run's size and fit), because that is
where the CAM is computed and where a shortcut would act. Intervals come from metrics.py's
bootstrap, over whole groups (patients, lesions) where the images have them.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, cast

import numpy as np
import pandas as pd

from ..errors import BadInputError, first_line
from ..metrics import compute_metric, metrics_with_ci, paired_bootstrap, resample_indices
from ..runs.records import ArtifactStrata, AuditBlock, MeanCI, MetricShift, Occlusion, Stats, Stratum
from . import artifacts as art
from . import regions

OUTCOMES = ("TP", "FP", "FN", "TN")
UNLABELLED_OUTCOMES = ("positive", "negative")  # without labels: the decision only
STRATUM_METRICS = ("roc_auc", "pauc_80", "average_precision", "recall", "specificity", "f1")
OCCLUSIONS = {"frame": "the outer frame", "off_lesion": "everything outside the lesion mask"}
AUDIT_VERSION = 1


@dataclass(frozen=True)
class AuditSettings:
    frame: float = regions.FRAME_SHARE  # the outer frame's width as a share of each side
    method: str = "gradcam"
    target_layer: str | None = None     # None: the model registry's layer
    n_boot: int = 2000
    seed: int = 0
    batch_size: int = 16                # CAM batch
    gallery: int = 4                    # images per outcome in the off-lesion gallery
    chunk: int = 256                    # images measured at a time (bounds memory)

    def check(self) -> "AuditSettings":
        from ..workflows.explain import METHODS

        if not 0 < self.frame < 0.5:
            raise BadInputError(f"--frame must be a share of the side in (0, 0.5), got {self.frame}")
        if self.method not in METHODS:
            raise BadInputError(f"--method must be one of {', '.join(METHODS)}, got '{self.method}'")
        for name in ("n_boot", "gallery"):
            if getattr(self, name) < 0:
                raise BadInputError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        for name in ("batch_size", "chunk"):
            if getattr(self, name) < 1:
                raise BadInputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        return self


@dataclass
class Audit:
    table: pd.DataFrame  # one row per image (see measure_chunk), plus id, label, group, outcome, strata columns
    block: AuditBlock    # the summary recorded in audit.json and metrics.json
    layers: list[str]


def cam_availability(predictor, images: np.ndarray, settings: AuditSettings) -> tuple[list[str], str | None]:
    """(layers, None) when CAMs can be computed, else ([], why): a model without a known target layer
    is measured without CAMs. A layer the user named that does not work is an error, not a skip."""
    from ..workflows.explain import predictor_cams

    try:
        return predictor_cams(predictor, images[:1], settings.method, settings.target_layer, 1)[1], None
    except BadInputError as e:
        if settings.target_layer:
            raise
        return [], first_line(e)


def measure_chunk(predictor, images: np.ndarray, settings: AuditSettings, cam: bool) -> pd.DataFrame:
    """Per image: its probability, lesion mask (area, source), artifacts, the probabilities with the frame
    and with everything off the lesion painted in its skin colour, and (with `cam`) the shares of the
    CAM's mass in the frame and off the lesion."""
    from ..workflows.explain import predictor_cams

    n, h, w = images.shape[:3]
    frame = regions.frame_mask(h, w, settings.frame)
    band = regions.frame_width(min(h, w), settings.frame) if frame is not None else 0
    masks, sources, skins, flags = [], [], [], []
    for image in images:
        mask, source = regions.lesion_mask(image, frame)
        skin = regions.skin_colour(image, mask, frame)
        masks.append(mask)
        sources.append(source)
        skins.append(skin)
        flags.append(art.detect(image, skin, band))
    out = pd.DataFrame({"prob": predictor.probabilities(images),
                        "lesion_area": [float(m.mean()) for m in masks], "mask": sources})
    out["prob_frame_hidden"] = (predictor.probabilities(np.stack([regions.occlude(i, frame, s) for i, s in zip(images, skins)]))
                                if frame is not None else np.nan)
    out["prob_off_lesion_hidden"] = predictor.probabilities(
        np.stack([regions.occlude(i, ~m, s) for i, m, s in zip(images, masks, skins)]))
    out["frame_share"] = out["off_lesion_share"] = np.nan
    if cam:
        maps, _ = predictor_cams(predictor, images, settings.method, settings.target_layer, settings.batch_size)
        if frame is not None:
            out["frame_share"] = [regions.mass_share(c, frame) for c in maps]
        out["off_lesion_share"] = [regions.mass_share(c, ~m) for c, m in zip(maps, masks)]
    for name in art.ARTIFACTS:
        out[name] = [f[name] for f in flags]
    out["skin_rgb"] = ["#%02x%02x%02x" % tuple(int(v) for v in s) for s in skins]
    return out


def audit_images(predictor, images: np.ndarray, ids, labels=None, groups=None, unit: str = "image",
                 strata: dict[str, np.ndarray] | None = None, settings: AuditSettings | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Audit:
    """The audit of `predictor` on uint8 (N, S, S, 3) images at its input size. `labels` (0/1) may be
    None (unlabelled images: shares and probability changes only); `groups` (one key per image) makes
    the intervals resample whole groups; `strata` maps a column name (e.g. attribution) to one value
    per image."""
    settings = (settings or AuditSettings()).check()
    n = len(images)
    if n == 0:
        raise BadInputError("the audit got no images")
    size = images.shape[1]
    if images.shape[1:] != (predictor.size, predictor.size, 3):
        raise BadInputError(f"the audit's images are {images.shape[1]}x{images.shape[2]}, the model takes "
                            f"{predictor.size}x{predictor.size}")
    layers, cam_note = cam_availability(predictor, images, settings)
    parts, done = [], 0
    for start in range(0, n, settings.chunk):
        parts.append(measure_chunk(predictor, images[start:start + settings.chunk], settings, cam_note is None))
        done += len(parts[-1])
        if progress:
            progress(done, n)
    table = pd.concat(parts, ignore_index=True)
    table.insert(0, "id", np.asarray(ids).astype(str))
    labelled = labels is not None
    if labelled:
        table.insert(1, "label", np.asarray(labels).astype(int))
    if groups is not None:
        table.insert(2 if labelled else 1, "group", np.asarray(groups).astype(str))
    decision = (table["prob"].to_numpy() >= predictor.threshold).astype(int)
    table.insert(table.columns.get_loc("prob") + 1, "decision", decision)
    table.insert(table.columns.get_loc("decision") + 1, "outcome", _outcomes(table["label"].to_numpy() if labelled else None,
                                                                          decision))
    for column, values in (strata or {}).items():
        table[column] = np.asarray(values).astype(str)
    block = summarise(table, float(predictor.threshold), settings, layers, cam_note, size,
                      list(strata or {}), unit if groups is not None else "image")
    return Audit(table, block, layers)


def _outcomes(y: np.ndarray | None, decision: np.ndarray) -> np.ndarray:
    if y is None:
        return np.where(decision == 1, "positive", "negative")
    return np.select([(y == 1) & (decision == 1), (y == 0) & (decision == 1), (y == 1) & (decision == 0)],
                     ["TP", "FP", "FN"], "TN")


# ---------------------------------------------------------------- the summary


def _stats(values: np.ndarray) -> Stats:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0}
    q25, median, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"n": int(len(v)), "mean": float(v.mean()), "median": float(median), "q25": float(q25), "q75": float(q75)}


def _mean_ci(values: np.ndarray, over: np.ndarray, y: np.ndarray, groups, n_boot: int, seed: int) -> MeanCI:
    """The mean of per-image values over the images marked in `over`, with its percentile interval over the
    same resamples of all images as the metrics (each resample's mean over its marked images)."""
    values = np.where(over, np.asarray(values, dtype=np.float64), np.nan)
    finite = np.isfinite(values)
    if not finite.any():
        return {"mean": float("nan"), "ci95": [float("nan")] * 2, "n": 0}
    out: MeanCI = {"mean": float(values[finite].mean()), "n": int(finite.sum())}
    if n_boot:
        idx = resample_indices(y, n_boot, seed, groups)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample without a marked image with a map
            means = np.array([np.nanmean(values[i]) for i in idx])
        out["ci95"] = [float(np.nanquantile(means, 0.025)), float(np.nanquantile(means, 0.975))]
    return out


def _both_classes(y: np.ndarray | None) -> bool:
    return y is not None and 0 < int(np.sum(y)) < len(y)


def _occlusion(y, prob, hidden, threshold: float, groups, settings: AuditSettings) -> Occlusion:
    change = hidden - prob
    out: Occlusion = {"mean_change": float(np.mean(change)), "mean_abs_change": float(np.mean(np.abs(change))),
                      "p95_abs_change": float(np.quantile(np.abs(change), 0.95)), "max_abs_change": float(np.max(np.abs(change))),
                      "decisions_changed": int(np.sum((prob >= threshold) != (hidden >= threshold)))}
    if y is not None:
        out["mean_change_malignant"] = float(np.mean(change[y == 1])) if (y == 1).any() else float("nan")
        out["mean_change_benign"] = float(np.mean(change[y == 0])) if (y == 0).any() else float("nan")
    if not _both_classes(y):
        return out
    shifts: dict[str, MetricShift] = {}
    for metric in ("roc_auc", "pauc_80"):
        original, occluded = compute_metric(metric, y, prob), compute_metric(metric, y, hidden)
        shifts[metric] = {"original": original, "hidden": occluded, "drop": original - occluded}
    if settings.n_boot:
        # B - A with A = hidden, B = original: the drop, on the same resampled images (whole groups)
        paired = paired_bootstrap(y, hidden, prob, threshold, threshold, tuple(shifts), settings.n_boot,
                                  settings.seed, groups=groups)
        for metric, d in paired.items():
            shifts[metric]["ci95"] = [d["lo"], d["hi"]]
    out["roc_auc"], out["pauc_80"] = shifts["roc_auc"], shifts["pauc_80"]
    return out


def _stratum(y, prob, groups, threshold: float, unit: str, settings: AuditSettings) -> Stratum:
    if not len(prob):
        return {"n": 0}
    out: Stratum = {"n": int(len(prob))}
    if y is None:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a stratum of one class has no ranking metrics
        m = metrics_with_ci(y, prob, threshold, settings.n_boot, settings.seed, groups, unit)
    # STRATUM_METRICS are keys Stratum declares: cast, since a comprehension's keys are not literals to mypy
    out.update(cast(Stratum, {k: m[k] for k in STRATUM_METRICS}))
    out["n_malignant"], out["n_benign"] = m["n_malignant"], m["n_benign"]
    if "ci95" in m:
        out["ci95"] = {k: m["ci95"][k] for k in STRATUM_METRICS}
    return out


def summarise(table: pd.DataFrame, threshold: float, settings: AuditSettings, layers: list[str], cam_note: str | None,
              size: int, strata: list[str], unit: str = "image") -> AuditBlock:
    """The audit's block (recorded in audit.json and the run's metrics.json)."""
    y = table["label"].to_numpy() if "label" in table else None
    y_boot = y if y is not None else np.zeros(len(table), int)
    groups = table["group"].to_numpy() if "group" in table and unit != "image" else None
    prob = table["prob"].to_numpy()
    frame = regions.frame_mask(size, size, settings.frame)
    notes = []
    if frame is None:
        notes.append(f"images of {size} px are too small for a {settings.frame:.0%} frame (under one pixel; "
                     f"{regions.min_side_for_frame(settings.frame)} px at least): the frame share and frame occlusion "
                     "were skipped")
    if cam_note:
        notes.append(f"no CAM: {cam_note}; the CAM shares were skipped (occlusion and strata still measured)")
    if y is None:
        notes.append("the images have no labels: ROC AUC, pAUC80 and the strata's metrics were skipped")
    elif not _both_classes(y):
        notes.append("the images hold one class only: ROC AUC and pAUC80 (and their drops) are undefined")
    fallback = table["mask"] != "otsu"
    if fallback.any():
        counts = table.loc[fallback, "mask"].value_counts()
        notes.append(f"{int(fallback.sum())} of {len(table)} lesion masks fell back to the centre disc ("
                     + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")")
    cam = cam_note is None
    off = table["off_lesion_share"].to_numpy(dtype=np.float64)
    if cam and np.isnan(off).any():
        notes.append(f"{int(np.isnan(off).sum())} image(s) had an empty CAM (no evidence for malignancy anywhere) "
                     "and are left out of the shares")
    outcomes = OUTCOMES if y is not None else UNLABELLED_OUTCOMES
    by_outcome = {}
    for o in outcomes:
        sel = (table["outcome"] == o).to_numpy()
        by_outcome[o] = {"n": int(sel.sum()),
                         **({"frame_share": _stats(table["frame_share"][sel]),
                             "off_lesion_share": _stats(off[sel])} if cam else {}),
                         "lesion_area": _stats(table["lesion_area"][sel])}
    occlusion = {"frame": (_occlusion(y, prob, table["prob_frame_hidden"].to_numpy(), threshold, groups, settings)
                           if frame is not None else None),
                 "off_lesion": _occlusion(y, prob, table["prob_off_lesion_hidden"].to_numpy(), threshold, groups, settings)}
    artifacts: dict[str, ArtifactStrata] = {}
    for name in art.ARTIFACTS:
        flag = table[name].to_numpy(dtype=bool)
        artifacts[name] = {"description": art.DESCRIPTIONS[name], "n_with": int(flag.sum()),
                           "with": _stratum(*_subset(y, prob, groups, flag), threshold, unit, settings),
                           "without": _stratum(*_subset(y, prob, groups, ~flag), threshold, unit, settings)}
    by_column = {}
    for column in strata:
        values = table[column].replace("", "(none)")
        by_column[column] = {str(v): _stratum(*_subset(y, prob, groups, (values == v).to_numpy()), threshold, unit, settings)
                             for v in values.value_counts().index}
    # the headline is over the images the model flags (TP + FP): a CAM shows the evidence for malignancy,
    # and in an image the model calls benign there is little, which min-max scaling blows up to noise
    flagged = table["decision"].to_numpy() == 1
    over = "flagged"
    if cam and not np.isfinite(off[flagged]).any():
        flagged, over = np.ones(len(table), bool), "all"
        notes.append("no flagged image has a CAM: the headline shares are over all images")
    on_lesion: MeanCI | None = ({**_mean_ci(1 - off, flagged, y_boot, groups, settings.n_boot, settings.seed),
                                 "over": over} if cam else None)
    frame_share: MeanCI | None = ({**_mean_ci(table["frame_share"].to_numpy(dtype=np.float64), flagged, y_boot, groups,
                                              settings.n_boot, settings.seed), "over": over}
                                  if cam and frame is not None else None)
    frame_drop = (occlusion["frame"] or {}).get("roc_auc", {}).get("drop")
    return {
        "version": AUDIT_VERSION,
        "on_lesion_share": on_lesion["mean"] if on_lesion else None,
        "frame_auc_drop": frame_drop,
        "n": int(len(table)),
        **({"n_malignant": int(y.sum()), "n_benign": int((y == 0).sum())} if y is not None else {}),
        "settings": {**{k: v for k, v in asdict(settings).items() if k not in ("batch_size", "chunk")},
                     "layers": layers, "lesion_mask": regions.MASK_RULE, "threshold": threshold, "image_size": size,
                     "ci95_unit": unit},
        "cam": {"on_lesion": on_lesion, "frame": frame_share,
                # what a uniform map would give over the same images
                "area": {"frame": float(frame.mean()) if frame is not None else None,
                         "lesion": float(table["lesion_area"][flagged & np.isfinite(off)].mean())}}
        if cam else {"skipped": cam_note},
        "by_outcome": by_outcome,
        "mask_fallback": {"n": int(fallback.sum()), "share": float(fallback.mean()),
                          "by_reason": {r: int((table["mask"] == r).sum()) for r in regions.FALLBACK_REASONS}},
        "occlusion": occlusion,
        "artifacts": artifacts,
        "strata": by_column,
        "notes": notes,
    }


def _subset(y, prob, groups, sel) -> tuple[Any, Any, Any]:
    return (y[sel] if y is not None else None, prob[sel], groups[sel] if groups is not None else None)
