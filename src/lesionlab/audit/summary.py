"""The audit in words and tables, for `lesionlab audit`, audit.md, the report and compare. Reads only the
block (audit.json, or the `audit` of a run's metrics.json); imports no torch."""
from __future__ import annotations

import math
from typing import Any, Mapping

from .artifacts import ARTIFACTS, DESCRIPTIONS

# an audit block: an AuditBlock (audit/records.py) as the audit returns it, or the same read back from JSON
Block = Mapping[str, Any]

METRIC_LABELS = {"roc_auc": "ROC AUC", "pauc_80": "pAUC80", "average_precision": "AP", "recall": "sensitivity",
                 "specificity": "specificity", "f1": "F1"}


def _num(v, digits: int = 3, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _ci(ci, digits: int = 3, sign: bool = False) -> str:
    return f" [{_num(ci[0], digits, sign)}, {_num(ci[1], digits, sign)}]" if ci else ""


def on_lesion_text(block: Block) -> str:
    cam = block.get("cam", {})
    if "skipped" in cam:
        return "CAM shares skipped (" + cam["skipped"] + ")"
    on, frame, area = cam["on_lesion"], cam.get("frame"), cam["area"]
    over = f"the {on['n']} images flagged malignant" if on.get("over") == "flagged" else f"all {on['n']} images with a map"
    text = (f"CAM mass on the lesion {_num(on['mean'])}{_ci(on.get('ci95'))} over {over} (a uniform map: "
            f"{_num(area['lesion'])})")
    if frame:
        text += f", in the outer frame {_num(frame['mean'])}{_ci(frame.get('ci95'))} (uniform: {_num(area['frame'])})"
    return text


def drop_text(block: Block, key: str, metric: str = "roc_auc") -> str:
    occ = (block.get("occlusion") or {}).get(key)
    if occ is None:
        return "n/a (image too small for the frame)" if key == "frame" else "n/a"
    if metric not in occ:
        return f"n/a (mean |change in p| {_num(occ['mean_abs_change'])})"
    d = occ[metric]
    return f"{_num(d['drop'], sign=True)}{_ci(d.get('ci95'), sign=True)}"


def headline(block: Block) -> str:
    """One line: where the evidence lies and what hiding the frame does."""
    fallback = block.get("mask_fallback", {})
    return (f"{on_lesion_text(block)}; ROC AUC drop with the frame hidden {drop_text(block, 'frame')}, with everything "
            f"off the lesion hidden {drop_text(block, 'off_lesion')}; {fallback.get('n', 0)} of {block.get('n')} lesion "
            "masks fell back to the centre")


def provenance(block: Block) -> str:
    rec = block.get("recorded") or {}
    s = block.get("settings", {})
    where = {"train": "by train, on its test set", "audit": "by `lesionlab audit`, on the run's test set"}.get(
        str(rec.get("by")), rec.get("by", "?"))
    prev = f"; {len(block['previous'])} earlier audit(s) kept under audit.previous" if block.get("previous") else ""
    return (f"recorded {where} ({rec.get('at', '?')}, lesionlab {rec.get('version', '?')}); {block.get('n')} images, "
            f"{s.get('method')} on {', '.join(s.get('layers') or []) or 'no layer'}, frame {s.get('frame', 0):.0%} of each "
            f"side, {s.get('n_boot')} resamples of {s.get('ci95_unit', 'image')}{prev}")


def tables(block: Block) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the audit's tables: by outcome, occlusion, artifact strata, column strata."""
    out = []
    cam = "skipped" not in block.get("cam", {})
    header = ["outcome", "images", "lesion area (median)"]
    if cam:
        header += ["CAM mass in frame: median [IQR]", "CAM mass off lesion: median [IQR]", "off lesion: mean"]
    rows = []
    for outcome, d in block["by_outcome"].items():
        row = [outcome, str(d["n"]), _num(d["lesion_area"].get("median"))]
        if cam:
            for key in ("frame_share", "off_lesion_share"):
                s = d[key]
                row.append(f"{_num(s.get('median'))} [{_num(s.get('q25'))}, {_num(s.get('q75'))}]" if s["n"] else "n/a")
            row.append(_num(d["off_lesion_share"].get("mean")))
        rows.append(row)
    out.append(("Where the evidence lies, by outcome at the run's threshold", header, rows))
    header = ["hidden", "ROC AUC: original -> hidden", "drop [95% CI]", "pAUC80 drop [95% CI]", "mean |change in p|",
              "95th pct |change|", "decisions changed"]
    rows = []
    for key, what in (("frame", "outer frame"), ("off_lesion", "everything off the lesion")):
        occ = block["occlusion"].get(key)
        if occ is None:
            rows.append([what, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"])
            continue
        auc = occ.get("roc_auc")
        rows.append([what, f"{_num(auc['original'])} -> {_num(auc['hidden'])}" if auc else "n/a",
                     drop_text(block, key), drop_text(block, key, "pauc_80"), _num(occ["mean_abs_change"]),
                     _num(occ["p95_abs_change"]), str(occ["decisions_changed"])])
    out.append(("Hidden in the image's own skin colour", header, rows))
    rows = []
    for name in ARTIFACTS:
        a = block["artifacts"][name]
        rows.append([DESCRIPTIONS[name], f"{a['n_with']} of {block['n']}", *_stratum_cells(a["with"]),
                     *_stratum_cells(a["without"])])
    out.append(("Artifacts as strata (metrics at the run's threshold; 95% intervals)",
                ["artifact", "images with", "with: ROC AUC", "with: sensitivity", "without: ROC AUC", "without: sensitivity"],
                rows))
    for column, values in block.get("strata", {}).items():
        rows = [[value, str(s["n"]), f"{s.get('n_malignant', '?')}", *_stratum_cells(s, ("roc_auc", "pauc_80", "recall",
                                                                                      "specificity"))]
                for value, s in values.items()]
        out.append((f"By {column}", [column, "images", "malignant", "ROC AUC", "pAUC80", "sensitivity", "specificity"], rows))
    return out


def _stratum_cells(s: dict, keys=("roc_auc", "recall")) -> list[str]:
    if not s.get("n"):
        return ["n/a"] * len(keys)
    ci = s.get("ci95", {})
    return [f"{_num(s.get(k), 4 if k == 'pauc_80' else 3)}{_ci(ci.get(k), 4 if k == 'pauc_80' else 3)}" if k in s else "n/a"
            for k in keys]


def lines(block: Block) -> list[str]:
    """The audit's headline, where it came from, and its notes."""
    return [headline(block)] + ([provenance(block)] if block.get("recorded") else []) + list(block.get("notes", []))


def side(runs) -> dict:
    """One side of a comparison (a run or the seeds of one experiment): the audit's numbers, averaged over the
    runs that have one."""
    blocks = [r.metrics.get("audit") for r in runs]
    audited = [b for b in blocks if b]
    out: dict = {"runs": len(runs), "audited": len(audited)}
    for key in ("on_lesion_share", "frame_auc_drop"):
        values = [b[key] for b in audited if b.get(key) is not None]
        if values:
            mean = sum(values) / len(values)
            sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
            out[key] = {"mean": mean, "sd": sd, "n": len(values)}
    if len(audited) == 1:
        out["ci95"] = {"on_lesion_share": ((audited[0].get("cam") or {}).get("on_lesion") or {}).get("ci95"),
                       "frame_auc_drop": ((audited[0].get("occlusion") or {}).get("frame") or {}).get("roc_auc", {}).get("ci95")}
    return out


def side_text(s: dict) -> str:
    if not s["audited"]:
        return "not audited (`lesionlab audit RUN --out AUDIT_DIR` records it)"
    parts = []
    for key, label, sign in (("on_lesion_share", "CAM mass on the lesion", False), ("frame_auc_drop", "ROC AUC drop, frame hidden", True)):
        v = s.get(key)
        if v is None:
            parts.append(f"{label} n/a")
        elif v["sd"] is not None:
            parts.append(f"{label} {_num(v['mean'], sign=sign)} ± {_num(v['sd'])} over {v['n']} runs")
        else:
            parts.append(f"{label} {_num(v['mean'], sign=sign)}{_ci((s.get('ci95') or {}).get(key), sign=sign)}")
    note = f" ({s['audited']} of {s['runs']} runs audited)" if s["audited"] < s["runs"] else ""
    return "; ".join(parts) + note


def paired_text(p: dict) -> str:
    """B - A of two runs' audits on the same images (audit.paired.paired_audit)."""
    parts = []
    for key, label in (("on_lesion_share", "CAM mass on the lesion"), ("frame_auc_drop", "ROC AUC drop, frame hidden")):
        d = p[key]
        parts.append(f"{label} {_num(d['diff'], sign=True)}{_ci(d.get('ci95'), sign=True)}")
    return "; ".join(parts) + f" ({p['n_boot']} resamples)"
