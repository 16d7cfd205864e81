"""Two runs' audits of the same test images, paired: is B's evidence more on the lesion than A's, and does B
lean less on the frame? (e.g. a lever such as an augmentation that masks borders, against the baseline)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..metrics import resample_indices, roc_auc


def _on_lesion(t: pd.DataFrame, rows=slice(None)) -> float:
    """Mean CAM share on the lesion over the flagged images with a map (the audit's headline)."""
    on = (1 - t["off_lesion_share"].to_numpy(dtype=np.float64))[rows]
    flagged = t["decision"].to_numpy()[rows] == 1
    on = on[flagged & np.isfinite(on)]
    return float(on.mean()) if len(on) else float("nan")


def _frame_drop(y: np.ndarray, t: pd.DataFrame, rows=slice(None)) -> float:
    yy = y[rows]
    if not 0 < yy.sum() < len(yy):
        return float("nan")
    return roc_auc(yy, t["prob"].to_numpy()[rows]) - roc_auc(yy, t["prob_frame_hidden"].to_numpy()[rows])


def paired_audit(a: pd.DataFrame, b: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict | None:
    """B - A of the on-lesion share and of the ROC AUC drop with the frame hidden, on the same resampled
    images (whole groups where the tables have them); None when the two tables hold other images or lack
    what is needed (labels, CAM shares, frame occlusion)."""
    need = {"id", "label", "decision", "prob", "prob_frame_hidden", "off_lesion_share"}
    if not need <= set(a.columns) or not need <= set(b.columns):
        return None
    a, b = a.sort_values("id", kind="mergesort").reset_index(drop=True), b.sort_values("id", kind="mergesort").reset_index(drop=True)
    if len(a) != len(b) or not np.array_equal(a["id"].astype(str).to_numpy(), b["id"].astype(str).to_numpy()):
        return None
    y = a["label"].to_numpy().astype(int)
    groups = a["group"].astype(str).to_numpy() if "group" in a else None
    idx = resample_indices(y, n_boot, seed, groups) if n_boot else []
    out: dict[str, Any] = {"n": int(len(a)), "n_boot": n_boot, "unit": "group" if groups is not None else "image"}
    for key, value in (("on_lesion_share", lambda t, r=slice(None): _on_lesion(t, r)),
                       ("frame_auc_drop", lambda t, r=slice(None): _frame_drop(y, t, r))):
        va, vb = value(a), value(b)
        d: dict[str, Any] = {"a": va, "b": vb, "diff": vb - va}
        if n_boot:
            diffs = np.array([value(b, i) - value(a, i) for i in idx])
            diffs = diffs[np.isfinite(diffs)]
            d["ci95"] = [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))] if len(diffs) else None
        out[key] = d
    return out


def audit_table(run) -> pd.DataFrame | None:
    """The per-image table of a run's recorded audit (in the run folder, or a later audit's folder), if it is there."""
    from pathlib import Path

    from ..runs.reader import read_table

    block = run.metrics.get("audit") or {}
    if not block.get("table"):
        return None
    path = Path(block["table"]) if Path(block["table"]).is_absolute() else run.path / block["table"]
    try:
        return read_table(path)
    except (OSError, ValueError):
        return None
