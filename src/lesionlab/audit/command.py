"""`lesionlab audit RUN [INPUT] --out AUDIT_DIR`, and the audit every train run writes of its test set.

AUDIT_DIR holds audit.json (the block below, with the run and the input), audit.csv (one row per
image), audit.md and figures/ (audit_shares.png, audit_gallery.png); it appears only when complete.

The run's own number lives in its metrics.json under `audit`:
- `train` computes it on its test set before it writes metrics.json, so the run is still published
  whole, metrics.json last;
- `lesionlab audit RUN` (INPUT left out, so the run's test set) records it afterwards: metrics.json is
  replaced atomically (a temporary file renamed over it), under the run folder's lock, and only after
  AUDIT_DIR is complete. A re-audit is honest: the block says who recorded it, when, with which
  lesionlab, settings and layer; the block it replaces is kept, in brief, under `audit.previous`, so
  auditing again until the number looks better leaves a trace. An audit of other images (INPUT given)
  is never recorded in the run: it is not the run's number.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import BadInputError, ExistsError, LesionLabError, closest, preview
from ..fileio import absolute, check_free, exclusive, read_json, staged_dir, write_csv, write_json, write_text
from ..runs import format as fmt
from ..runs.records import AuditBlock, AuditResult, Parts
from . import figures
from .measure import Audit, AuditSettings, audit_images

AUDIT_JSON = "audit.json"
AUDIT_MD = "audit.md"
TABLE = fmt.AUDIT_TABLE
FIGURES_DIR = fmt.FIGURES_DIR
STRATA_AUTO = ("attribution",)  # ISIC 2024's institution: one clinic's look can be the shortcut
IMAGE_KINDS = ("train", "cv", "ensemble")


@dataclass
class AuditInput:
    images: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None
    groups: np.ndarray | None
    unit: str
    strata: dict[str, np.ndarray]
    description: dict
    skipped: list[str]


def _strata(table: pd.DataFrame, wanted: list[str] | None, where: str) -> dict[str, np.ndarray]:
    """The columns to split the metrics by: `wanted`, or ISIC 2024's attribution where the data has it filled."""
    if wanted is None:
        return {c: table[c].astype(str).to_numpy() for c in STRATA_AUTO if c in table and (table[c].astype(str) != "").any()}
    missing = [c for c in wanted if c not in table]
    if missing:
        known = [c for c in table.columns if c not in ("locator", "index", "path")]
        raise BadInputError(f"--strata {missing[0]}: {where} has no column '{missing[0]}'{closest(missing[0], known)}; "
                            f"columns: {preview(known)}")
    return {c: table[c].astype(str).to_numpy() for c in wanted}


def _test_description(store, split_sha256: str | None, ids: np.ndarray) -> dict:
    return {"kind": "test", "data": str(Path(store.root).resolve()), "store_hash": store.content_hash,
            "split_sha256": split_sha256, "ids_sha256": hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()}


def _store_strata(store, ids: np.ndarray, strata: list[str] | None) -> dict[str, np.ndarray]:
    if strata is not None:
        _strata(pd.DataFrame(columns=store.columns), strata, str(store.root))  # a missing column, named with the known
    wanted = list(strata) if strata is not None else list(STRATA_AUTO)
    meta = store.metadata(wanted).drop_duplicates("id").set_index("id").reindex(ids).fillna("").reset_index()
    return _strata(meta, strata, str(store.root))


def training_test_set(store, positions: np.ndarray, images: np.ndarray, labels: np.ndarray, groups: np.ndarray | None,
                      group_rule: str, split_sha256: str) -> AuditInput:
    """The test set a run being trained holds in memory, for its own audit."""
    from ..metrics import ci_unit

    ids = store.table["id"].astype(str).to_numpy()[positions]
    grouped = groups is not None and group_rule != "none"
    return AuditInput(images, ids, np.asarray(labels).astype(int), groups if grouped else None,
                      ci_unit(group_rule if grouped else None), _store_strata(store, ids, None),
                      _test_description(store, split_sha256, ids), [])


def run_test_set(run, size: int, data: str | os.PathLike | None = None, strata: list[str] | None = None) -> AuditInput:
    """The test images a run was judged on, read from its prepared data set (checked by hash), with the
    labels and groups of its predictions.csv."""
    from ..data.store import Store
    from ..metrics import ci_unit

    if "data" not in run.info and data is None:
        raise BadInputError(f"{run.path}: run.json names no data set; pass --data DATA_DIR")
    store = Store.open(data or run.info["data"])
    if run.info.get("store_hash") and store.content_hash != run.info["store_hash"]:
        raise BadInputError(f"{store.root}: not the data set {run.path} was trained on (store hash differs); "
                            "pass --data with the right DATA_DIR")
    if store.size != size:
        raise BadInputError(f"{store.root}: images of {store.size} px, but the run's model takes {size} px")
    test = run.predictions("test")
    position = pd.Series(np.arange(len(store.table)), index=store.table["id"].astype(str))
    missing = sorted(set(test["id"]) - set(position.index))
    if missing:
        raise BadInputError(f"{store.root}: {len(missing)} of the run's test images are not in the data set: {preview(missing)}")
    pos = position.loc[test["id"]].to_numpy()
    groups = test["group"].astype(str).to_numpy() if "group" in test else None
    unit = ci_unit(run.group_rule) if groups is not None else "image"
    ids = test["id"].astype(str).to_numpy()
    return AuditInput(store.pixels(pos), ids, test["label"].to_numpy().astype(int), groups, unit,
                      _store_strata(store, ids, strata), _test_description(store, run.info.get("split_sha256"), ids), [])


def read_input(source: str | os.PathLike, size: int, fit: str, fmt: str = "auto", skip_bad: bool = False,
               strata: list[str] | None = None) -> AuditInput:
    """Any image, folder, manifest or ISIC 2024 pair, decoded at the run's size and fit as predict does;
    labels, groups (patient, else lesion) and metadata columns where the input has them."""
    from ..data.sources import read_source
    from ..data.splits import group_keys
    from ..workflows.predict import decode_chunk

    src = read_source(source, fmt, require_labels=False, metadata=True)
    table = src.table
    images, ok, reasons = decode_chunk(src.reader, table["locator"].tolist(), size, fit)
    bad = [f"{table['id'].iloc[i]} ({why})" for i, why in reasons.items()]
    if bad and not skip_bad:
        raise BadInputError(f"{src.location}: {len(bad)} image(s) could not be read: {preview(bad)} (--skip-bad skips them)")
    table, images = table[ok].reset_index(drop=True), images[ok]
    if table.empty:
        raise BadInputError(f"{src.location}: no readable images")
    labels = None
    if "label" in table and table["label"].notna().all():
        labels = table["label"].astype(int).to_numpy()
    keys, rule = group_keys(table, "auto")
    return AuditInput(images, table["id"].astype(str).to_numpy(), labels, keys if rule != "none" else None,
                      rule if rule != "none" else "image", _strata(table, strata, str(src.location)),
                      {"kind": "input", "location": str(Path(src.location).resolve()), "format": src.format}, bad)


def write_parts(folder: Path, audit: Audit, images: np.ndarray, predictor, settings: AuditSettings) -> Parts:
    """audit.csv and the figures into `folder`; their paths relative to it."""
    table = audit.table.copy()
    for name in ("dark_corners", "border_lines", "frame"):
        table[name] = table[name].astype(int)
    write_csv(folder / TABLE, table, float_format="%.6g")
    (folder / FIGURES_DIR).mkdir(exist_ok=True)
    figures.shares_figure(audit, folder / FIGURES_DIR / figures.SHARES)
    gallery = figures.gallery_figure(audit, images, predictor, settings, folder / FIGURES_DIR / figures.GALLERY)
    return {"table": TABLE, "figures": {"shares": f"{FIGURES_DIR}/{figures.SHARES}",
                                        "gallery": f"{FIGURES_DIR}/{figures.GALLERY}" if gallery else None}}


def _stamp(by: str) -> dict[str, str]:
    return {"by": by, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "version": __version__}


def audit_in_run(folder: Path, predictor, test: AuditInput, settings: AuditSettings) -> AuditBlock:
    """The audit of a run's test set written into its (staging) folder; the block for its metrics.json,
    with paths relative to the run folder."""
    audit = audit_images(predictor, test.images, test.ids, test.labels, test.groups, test.unit, test.strata, settings)
    parts = write_parts(folder, audit, test.images, predictor, settings)
    return {**audit.block, "input": test.description, **parts, "recorded": _stamp("train")}


def _brief(block: AuditBlock) -> dict[str, Any]:
    """What a replaced audit leaves under audit.previous."""
    settings = {k: v for k, v in block.get("settings", {}).items() if k != "lesion_mask"}
    return {"on_lesion_share": block.get("on_lesion_share"), "frame_auc_drop": block.get("frame_auc_drop"),
            "n": block.get("n"), "recorded": block.get("recorded"), "settings": settings}


def record(run_path: Path, block: AuditBlock) -> AuditBlock:
    """Put `block` into the run's metrics.json as `audit`, the one it replaces kept in brief under
    audit.previous; atomic, under the run folder's lock."""
    path = Path(run_path) / fmt.METRICS
    with exclusive(run_path, "recording an audit in"):
        metrics = read_json(path)
        old = metrics.get("audit")
        if old:
            block = {**block, "previous": list(old.get("previous", [])) + [_brief(old)]}
        metrics["audit"] = block
        try:
            write_json(path, metrics)
        except (OSError, LesionLabError) as e:
            raise LesionLabError(f"{path}: the audit could not be recorded ({e}); the audit folder is complete") from None
    return block


def is_audit_output(path: Path) -> bool:
    """An earlier AUDIT_DIR (the only folder --overwrite replaces)."""
    return (Path(path) / AUDIT_JSON).is_file()


def audit_run(run_dir: str | os.PathLike, source: str | os.PathLike | None, out: str | os.PathLike, *,
              data: str | os.PathLike | None = None, fmt: str = "auto", settings: AuditSettings | None = None,
              strata: list[str] | None = None, record_in_run: bool = True, overwrite: bool = False,
              device: str = "auto", skip_bad: bool = False, progress: Callable[[int, int], None] | None = None) -> AuditResult:
    """Audit a train, cv or ensemble run on its test set (source None) or on other images; write AUDIT_DIR;
    with the test set, record the block in the run's metrics.json (unless record_in_run is False)."""
    from ..runs import load_run
    from ..runs.predictor import load_image_predictor

    settings = (settings or AuditSettings()).check()
    out = absolute(out)
    if out.exists() and not out.is_dir():
        raise ExistsError(f"--out {out}: is an existing file; --out names a folder to create")
    run = load_run(run_dir)
    if run.kind not in IMAGE_KINDS:
        raise BadInputError(f"{run.path}: a {run.kind} run folder; the audit looks at what an image model sees "
                            f"(a {', '.join(IMAGE_KINDS[:-1])} or {IMAGE_KINDS[-1]} run)")
    if out == run.path.resolve() or run.path.resolve() in out.resolve().parents:
        raise BadInputError(f"--out {out}: inside the run folder {run.path}; choose a folder outside it")
    replace = is_audit_output if overwrite else None
    if not overwrite and out.is_dir() and is_audit_output(out):
        raise ExistsError(f"{out}: holds an earlier audit; choose another --out or pass --overwrite to replace it")
    check_free(out, what="audit", replace=replace)
    predictor = load_image_predictor(run.path, device, "audit")
    if source is None:
        given = run_test_set(run, predictor.size, data, strata)
    else:
        given = read_input(source, predictor.size, predictor.fit, fmt, skip_bad, strata)
    audit = audit_images(predictor, given.images, given.ids, given.labels, given.groups, given.unit, given.strata,
                         settings, progress)
    with staged_dir(out, what="audit", replace=replace) as staging:
        parts = write_parts(staging, audit, given.images, predictor, settings)
        doc: AuditBlock = {**audit.block, "run": str(run.path.resolve()), "run_kind": run.kind, "input": given.description,
               "skipped_unreadable": given.skipped, **parts}
        write_json(staging / AUDIT_JSON, doc)
        write_text(staging / AUDIT_MD, markdown(doc, str(run.path)))
    recorded = None
    if source is None and record_in_run:
        folder = out.resolve()
        block: AuditBlock = {**audit.block, "input": given.description, "table": str(folder / parts["table"]),
                 "figures": {k: str(folder / v) if v else None for k, v in parts["figures"].items()},
                 "folder": str(folder), "recorded": _stamp("audit")}
        recorded = record(run.path, block)
    return {"block": audit.block, "out": str(out), "recorded": recorded is not None,
            "replaced": len((recorded or {}).get("previous", [])), "skipped": given.skipped, "layers": audit.layers}


def markdown(doc: AuditBlock, run: str) -> str:
    from ..workflows.report import md_code, md_escape, md_table
    from . import summary

    where = ("the run's test set" if doc["input"]["kind"] == "test"
             else f"{md_code(doc['input']['location'])} ({doc['input']['format']})")
    md = [f"# Shortcut audit of {md_code(run)}", "",
          f"{doc['n']} images of {where}; generated {time.strftime('%Y-%m-%d %H:%M')} by lesionlab {__version__}. "
          "No manual annotation: the lesion is found by the rule below, the frame is the outer "
          f"{doc['settings']['frame']:.0%} of each side, and hidden parts are painted in the image's own skin colour.", ""]
    md += [f"- {md_escape(line)}" for line in summary.lines(doc)]
    md += [f"- lesion mask: {md_escape(doc['settings']['lesion_mask'])}", ""]
    for title, header, rows in summary.tables(doc):
        md += [f"## {md_escape(title)}", "", md_table(header, rows), ""]
    for key, caption in (("shares", "CAM shares by outcome and the occlusions' probabilities"),
                         ("gallery", "the images with the most CAM mass off the lesion")):
        if doc["figures"].get(key):
            md += [f"![{caption}]({doc['figures'][key]})", ""]
    return "\n".join(md) + "\n"
