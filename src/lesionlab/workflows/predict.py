"""Apply a trained run to new images of any size and layout, in bounded memory (or, for a tabular
run, to rows of metadata, with the images scored too when the run is fused with an image model).

Images are decoded and resized exactly as the run's training data (same size and fit), in
worker processes, a chunk at a time; rows are written as they come, into a file that only
takes its final name once complete. `fmt="kaggle"` writes the ISIC 2024 competition's submission
file instead: exactly `isic_id,target` (the probability), one row per input image in its order.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from ..config import PredictConfig, validated
from ..data.images import DEFAULT_MAX_PIXELS, DecodeError, decode_resize
from ..data.parallel import cpu_count, map_ordered
from ..data.sources import ISIC_ID, ImageReader, Source, read_source
from ..errors import BadInputError, preview
from ..fileio import atomic_path, make_dirs, require_file_out, safe_to_csv, write_csv

if TYPE_CHECKING:  # runs/ imports torch, which predict with --engine onnxruntime never loads
    from ..runs.records import PredictResult

CHUNK = 512
KAGGLE_COLUMNS = ("isic_id", "target")
# the submission is ranked by its scorer: enough digits that no two different probabilities tie
KAGGLE_FLOAT = "%.9g"


def decode_chunk(reader: ImageReader, locators: list[str], size: int, fit: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """(images at the run's size and fit, which were readable, {position: why not}) of some locators."""
    out = np.zeros((len(locators), size, size, 3), np.uint8)
    ok = np.ones(len(locators), bool)
    reasons = {}
    for i, loc in enumerate(locators):
        try:
            out[i] = decode_resize(reader.read(loc), size, fit, max_pixels)
        except (DecodeError, OSError, KeyError) as e:
            ok[i] = False
            reasons[i] = "missing" if isinstance(e, (FileNotFoundError, KeyError)) else str(e)
    return out, ok, reasons


def skipped_path(out: Path) -> Path:
    """Where predict --skip-bad lists every image it skipped: beside OUT, e.g. preds.skipped.csv."""
    return out.with_name(out.name.removesuffix(out.suffix) + ".skipped.csv")


def _named(bad: list[tuple[str, str]]) -> list[str]:
    return [f"{i} ({reason})" for i, reason in bad]


def _image_chunks(predictor, src, skip_bad: bool, workers: int | None, batch_size: int,
                  progress: Callable[[int, int], None] | None, max_pixels: int, kaggle: bool = False):
    """(rows of the chunk, which were readable, their probabilities, unreadable (id, reason)) per chunk."""
    table = src.table
    n = len(table)
    missing = set(src.reader.missing(table["locator"].tolist()))
    remedy = "a submission needs every test image" if kaggle else "--skip-bad skips them"
    if missing and not skip_bad:
        ids = table.loc[table["locator"].isin(missing), "id"].tolist()
        raise BadInputError(f"{src.location}: {len(ids)} of {n} image(s) missing: {preview(ids)} "
                            f"(looked for {src.reader.where()}; {remedy})")
    workers = max(1, min(workers or cpu_count(), -(-n // CHUNK)))
    if workers > 1:
        src.reader.close()
    starts = list(range(0, n, CHUNK))
    tasks = ((src.reader, table["locator"].iloc[s:s + CHUNK].tolist(), predictor.size, predictor.fit, max_pixels)
             for s in starts)
    done = 0
    for start, (images, ok, reasons) in zip(starts, map_ordered(decode_chunk, tasks, workers)):
        rows = table.iloc[start:start + len(ok)]
        bad = [(str(rows['id'].iloc[i]), reason) for i, reason in reasons.items()]
        if bad and not skip_bad:
            raise BadInputError(f"{src.location}: image(s) could not be read: {preview(_named(bad))} ({remedy})")
        yield rows, ok, predictor.probabilities(images[ok], batch_size), bad
        done += len(ok)
        if progress:
            progress(done, n)


def _require_isic_ids(src: Source) -> None:
    """A submission names every test image by its isic_id: input whose ids are not ISIC ids is refused."""
    ids = src.table["id"].astype(str)
    bad = ids[~ids.str.fullmatch(ISIC_ID.pattern)].tolist()
    if bad:
        raise BadInputError(f"--format kaggle: {src.location}: {len(bad)} of {len(ids)} image(s) have no ISIC id (ISIC_ "
                            f"and digits), which a submission names each image by: {preview(bad)}; give the "
                            "competition's test folder (test-metadata.csv + test-image.hdf5) or images named by isic_id")


def _output(ids, probs: np.ndarray, threshold: float, labels, kaggle: bool) -> tuple[pd.DataFrame, str]:
    """The rows to write and their float format: `id, prob, decision[, label]`, or the submission's `isic_id, target`."""
    if kaggle:
        return pd.DataFrame({KAGGLE_COLUMNS[0]: np.asarray(ids), KAGGLE_COLUMNS[1]: probs}), KAGGLE_FLOAT
    frame = pd.DataFrame({"id": np.asarray(ids), "prob": probs, "decision": (probs >= threshold).astype(int)})
    if labels is not None:
        frame["label"] = np.asarray(labels)
    return frame, "%.6g"


def predict(run_dir: str | os.PathLike, source: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto",
            skip_bad: bool = False, overwrite: bool = False, workers: int | None = None, batch_size: int = 256,
            device: str = "auto", progress: Callable[[int, int], None] | None = None,
            max_pixels: int = DEFAULT_MAX_PIXELS, tta: str | None = None, engine: str = "torch") -> PredictResult:
    """Write `id, prob, decision` (+ `label` where the input has labels) for every image (or row, for
    a tabular run); images whose header states more than `max_pixels` pixels are unreadable (never
    decoded). engine "onnxruntime" scores with a file `lesionlab export` wrote, and imports no torch.
    With skip_bad, the images skipped are listed with their reasons in OUT's skipped_path.
    fmt "kaggle": the input's layout is detected, and the output is the competition's submission file."""
    # the settings checked by the command's config model: the same one-line errors as the CLI's flags
    validated(PredictConfig, {"format": fmt, "batch_size": batch_size, "max_pixels": max_pixels, "tta": tta, "engine": engine})
    out = Path(out)
    require_file_out(out, overwrite)
    kaggle = fmt == "kaggle"
    if kaggle:
        if skip_bad:
            raise BadInputError("--format kaggle: a submission needs a row for every test image; --skip-bad would "
                                "leave the unreadable ones out")
        fmt = "auto"
        if Path(source).is_dir() and (Path(source) / "test-metadata.csv").is_file():
            source = Path(source) / "test-metadata.csv"  # the competition's folder also holds train-metadata.csv
    if skip_bad:
        require_file_out(skipped_path(out), overwrite, "--out (its list of skipped images)")
    run: Any  # an image predictor (torch or onnxruntime), or a rows kind's (runs/kinds.py)
    takes: str | None
    if engine == "onnxruntime":
        if tta not in (None, "none"):
            raise BadInputError(f"--tta {tta}: not available with --engine onnxruntime (the exported graph scores one view)")
        from .onnx_predictor import load_onnx_predictor

        run = load_onnx_predictor(run_dir)
        takes = "images"  # an exported graph scores images
    elif engine == "torch":
        from ..runs import load_predictor, load_run  # here: the onnxruntime path never imports torch

        folder = load_run(run_dir)
        takes = folder.declared.takes  # what its kind scores (runs/kinds.py)
        run = load_predictor(folder, device, tta)
    else:
        raise BadInputError(f"--engine must be torch or onnxruntime, got '{engine}'")
    make_dirs(out.parent)  # a new output: atomic_path creates no folders
    if takes == "rows":
        result = _predict_rows(run, source, out, fmt, skip_bad, workers, batch_size, device, progress, max_pixels, kaggle)
    else:
        result = _predict_images(run, source, out, fmt, skip_bad, workers, batch_size, progress, max_pixels, kaggle)
    return {**result, **_list_skipped(out, result.pop("bad"), skip_bad), "kaggle": kaggle}


def _list_skipped(out: Path, bad: list[tuple[str, str]], skip_bad: bool) -> dict:
    """Every skipped image and why, in a CSV beside OUT (a stale list of an output it replaced is removed)."""
    listing = skipped_path(out)
    if bad:
        write_csv(listing, pd.DataFrame(bad, columns=["id", "reason"]))
    elif skip_bad and listing.exists():
        listing.unlink()  # it listed what the replaced OUT skipped
    return {"skipped": len(bad), "skipped_ids": [i for i, _ in bad], "skipped_file": str(listing) if bad else None}


def _predict_images(run, source, out: Path, fmt: str, skip_bad: bool, workers: int | None, batch_size: int,
                    progress, max_pixels: int, kaggle: bool = False) -> dict:
    src = read_source(source, fmt, require_labels=False, metadata=False)
    if kaggle:
        _require_isic_ids(src)
    table = src.table
    n = len(table)
    has_label = "label" in table.columns
    bad: list[tuple[str, str]] = []
    started = time.perf_counter()
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        chunks = _image_chunks(run, src, skip_bad, workers, batch_size, progress, max_pixels, kaggle)
        for k, (rows, ok, probs, chunk_bad) in enumerate(chunks):
            bad += chunk_bad
            kept = rows[ok]
            frame, floats = _output(kept["id"].to_numpy(), probs, run.threshold,
                                    kept["label"].to_numpy() if has_label else None, kaggle)
            safe_to_csv(frame, f, header=k == 0, index=False, float_format=floats)  # ids: formula-safe
    seconds = time.perf_counter() - started
    return {"n": n - len(bad), "bad": bad, "seconds": seconds, "img_s": (n - len(bad)) / max(seconds, 1e-9),
            "threshold": run.threshold, "out": str(out), "unit": "image"}


def _predict_rows(run, source, out: Path, fmt: str, skip_bad: bool, workers: int | None, batch_size: int,
                  device: str, progress, max_pixels: int, kaggle: bool = False) -> dict:
    """A tabular run: read INPUT with its metadata, score its images too when the run is fused, then
    score every row at once (patient statistics are over INPUT's patients)."""
    started = time.perf_counter()
    src = read_source(source, fmt, require_labels=False, metadata=True)
    if kaggle:
        _require_isic_ids(src)
    table = src.table
    n = len(table)
    image_prob = None
    bad: list[tuple[str, str]] = []
    if run.fused:
        image_model = run.image_predictor(device)
        keep = np.zeros(n, bool)
        image_prob = np.full(n, np.nan)
        start = 0
        for rows, ok, probs, chunk_bad in _image_chunks(image_model, src, skip_bad, workers, batch_size, progress,
                                                        max_pixels, kaggle):
            where = start + np.flatnonzero(ok)
            keep[where] = True
            image_prob[where] = probs
            bad += chunk_bad
            start += len(rows)
        table, image_prob = table[keep], image_prob[keep]
    probs = run.probabilities_rows(table, image_prob, where=str(src.location))
    frame, floats = _output(table["id"].to_numpy(), probs, run.threshold,
                            table["label"].to_numpy() if "label" in table.columns else None, kaggle)
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        safe_to_csv(frame, f, index=False, float_format=floats)  # ids: formula-safe
    if progress and not run.fused:
        progress(n, n)
    seconds = time.perf_counter() - started
    return {"n": len(frame), "bad": bad, "seconds": seconds, "img_s": len(frame) / max(seconds, 1e-9),
            "threshold": run.threshold, "out": str(out), "unit": "row"}
