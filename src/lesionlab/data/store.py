"""The prepared data set: every image decoded once, resized, kept as one uint8 array on disk.

DATA_DIR/
  images.npy   (N, size, size, 3) uint8, memory-mapped by training and evaluation
  rows.csv     one row per usable image: id, label, groups, metadata, `index` into images.npy
  store.json   written last: its presence is what makes the store complete
  split*.json  fixed splits (see splits.py)

Decoding runs in worker processes that write straight into the memory-mapped array, so
memory stays bounded whatever the number of images; finished chunks are recorded, so an
interrupted prepare resumes where it stopped.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import BadInputError, ExistsError, LesionLabError, preview
from ..fileio import atomic_path, csv_restore, exclusive, read_json, require_folder_or_absent, safe_to_csv, sha256_file, write_json
from .images import DEFAULT_MAX_PIXELS, FITS, DecodeError, decode_resize
from .parallel import cpu_count, map_ordered
from .sources import ImageReader, Source

log = logging.getLogger(__name__)

STORE_FILE, ROWS_FILE, IMAGES_FILE, PROGRESS_FILE = "store.json", "rows.csv", "images.npy", ".prepare-progress.json"
CHUNK = 256
# seconds between progress records; each first fsyncs the pixels written so far, which also
# spreads the disk writes over the run instead of leaving them all to the end
PROGRESS_EVERY = 1.5
CORE_COLUMNS = ("id", "label", "patient_id", "lesion_id", "source_id", "locator", "synthetic", "index")
STORE_VERSION = 1


@dataclass
class Store:
    """A complete prepared data set, opened read-only."""

    root: Path
    meta: dict
    table: pd.DataFrame

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Store":
        root = Path(root)
        if not (root / STORE_FILE).exists():
            hint = (" (prepare was interrupted: run `lesionlab prepare` again to finish it)"
                    if (root / PROGRESS_FILE).exists() else "")
            raise BadInputError(f"{root}: not a prepared data set, no {STORE_FILE}{hint}; "
                                "make one with `lesionlab prepare SOURCE --out DATA_DIR`")
        meta = read_json(root / STORE_FILE)
        _check_images(root, meta)
        # only the columns the flow needs: a 401k-row ISIC 2024 table with all 55 metadata
        # columns takes seconds and a gigabyte to read whole; metadata() has the rest
        header = pd.read_csv(root / ROWS_FILE, nrows=0).columns
        # rows.csv holds ids and metadata as the user gave them, written formula-safe for
        # spreadsheets (fileio.csv_safe); restored here so that ids match splits and runs
        table = csv_restore(pd.read_csv(root / ROWS_FILE, dtype=str, keep_default_na=False,
                                        usecols=[c for c in header if c in CORE_COLUMNS]))
        table["label"] = table["label"].astype(np.int8)
        table["index"] = table["index"].astype(np.int64)
        return cls(root, meta, table)

    def metadata(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Every column of the rows, metadata included (or only `columns`, those of them it has, and id)."""
        usecols = None if columns is None else [c for c in self.columns if c == "id" or c in columns]
        return csv_restore(pd.read_csv(self.root / ROWS_FILE, dtype=str, keep_default_na=False, usecols=usecols))

    @property
    def columns(self) -> list[str]:
        """The names of every column of the rows (read from the header only)."""
        return list(pd.read_csv(self.root / ROWS_FILE, nrows=0).columns)

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def fit(self) -> str:
        return self.meta["fit"]

    @property
    def content_hash(self) -> str:
        return self.meta["content_hash"]

    @property
    def images(self) -> np.memmap:
        if not hasattr(self, "_images"):
            self._images = np.load(self.root / IMAGES_FILE, mmap_mode="r")
        return self._images

    def pixels(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (k, size, size, 3) for table positions `rows`, read in file order for speed."""
        index = self.table["index"].to_numpy()[np.asarray(rows, dtype=np.int64)]
        order = np.argsort(index, kind="stable")
        out = np.empty((len(index), self.size, self.size, 3), np.uint8)
        out[order] = self.images[index[order]]
        return out


def _check_images(root: Path, meta: dict) -> None:
    """images.npy must hold what store.json describes: a store whose array was truncated or replaced
    would otherwise fail far from the cause (an IndexError or SIGBUS in the middle of training)."""
    path = root / IMAGES_FILE
    size, n_rows = int(meta["size"]), int(meta["n"]) + len(meta.get("skipped", []))  # skipped rows keep their slot
    expected = (n_rows, size, size, 3)
    redo = (f"the prepared data set is damaged: delete {root} and run `lesionlab prepare SOURCE --out {root}` again")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except FileNotFoundError:
        raise BadInputError(f"{path}: missing, though {root / STORE_FILE} describes {n_rows} images; {redo}") from None
    except (OSError, ValueError) as e:
        raise BadInputError(f"{path}: not a readable .npy array ({e}); {redo}") from None
    if tuple(shape) != expected or dtype != np.uint8 or fortran:
        raise BadInputError(f"{path}: holds a {dtype} array of shape {tuple(shape)}, but {root / STORE_FILE} "
                            f"describes uint8 {expected}; {redo}")
    need, have = offset + int(np.prod(expected)), path.stat().st_size
    if have < need:
        raise BadInputError(f"{path}: truncated, {have} bytes where {expected} uint8 pixels need {need}; {redo}")


# ---------------------------------------------------------------- decoding workers


def _decode_chunk(reader: ImageReader, locators: list[str], positions: list[int], images_path: str,
                  size: int, fit: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[tuple[int, str]]:
    """Decode images into their rows of the memory-mapped array; return (position, reason) failures."""
    arr = np.load(images_path, mmap_mode="r+")
    failures = []
    for loc, pos in zip(locators, positions):
        try:
            arr[pos] = decode_resize(reader.read(loc), size, fit, max_pixels)
        except (DecodeError, OSError, KeyError) as e:
            reason = "missing" if isinstance(e, (FileNotFoundError, KeyError)) else str(e)
            failures.append((pos, reason))
    # no msync here: dirty pages outlive this process in the page cache; the main process fsyncs
    # the file before it records chunks as done (a flush per chunk cost ~12% of the decode time)
    del arr
    return failures


def _allocate(path: Path, n: int, size: int) -> None:
    """Create the array file at full size now, so a full disk fails here with a clear error
    instead of crashing a worker later (a write to a memory map of a full disk is SIGBUS)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    offset, nbytes = arr.offset, arr.nbytes
    del arr
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, offset + nbytes)
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            need = (offset + nbytes) / 2**30
            raise LesionLabError(f"{path.parent}: not enough disk space for the prepared images "
                                 f"({need:.2f} GiB needed); nothing was kept") from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # some filesystems cannot preallocate
            raise
    else:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _content_hash(rows_sha: str, size: int, fit: str, fingerprint: str) -> str:
    return hashlib.sha256(f"{rows_sha}\0{size}\0{fit}\0{fingerprint}".encode()).hexdigest()


def _check_out(out: Path, fingerprint: str, size: int, fit: str, location: str) -> str:
    """'reuse', 'resume' or 'new'; refuses a folder holding anything else."""
    if (out / STORE_FILE).exists():
        meta = read_json(out / STORE_FILE)
        held = meta.get("source", {})
        if (held.get("fingerprint"), meta.get("size"), meta.get("fit")) == (fingerprint, size, fit):
            return "reuse"
        if (held.get("location"), meta.get("size"), meta.get("fit")) == (location, size, fit):
            what = (f"the images of {location} changed since it was prepared (a file was added, removed, resized "
                    "or rewritten: the names, sizes and modification times differ)")
        else:
            what = (f"another source or size (source {held.get('location')}, size {meta.get('size')}, "
                    f"fit {meta.get('fit')})")
        raise ExistsError(f"{out}: already holds a prepared data set of {what}; choose another --out or delete it first")
    if (out / PROGRESS_FILE).exists():
        prog = read_json(out / PROGRESS_FILE)
        if (prog.get("fingerprint"), prog.get("size"), prog.get("fit")) == (fingerprint, size, fit):
            return "resume"
        return "new"  # an interrupted prepare of something else: ours to replace
    if out.exists() and any(out.iterdir()):
        raise ExistsError(f"{out}: exists and is not a prepared data set; choose an empty or new folder")
    return "new"


def _retry_over_limit(failures: dict[int, str], done: set[int], chunks: list[list[int]], max_pixels: int,
                      old_max_pixels: int) -> None:
    """On a resume with a higher --max-pixels, images refused for their size are decoded again
    (their chunks are no longer done), so the flag the error names does what it says."""
    if max_pixels <= old_max_pixels:
        return
    retry = [p for p, reason in failures.items() if "--max-pixels" in reason]
    for p in retry:
        del failures[p]
    redo = {c for c, chunk in enumerate(chunks) if set(chunk) & set(retry)}
    done -= redo


def prepare(source: Source, out: str | os.PathLike, size: int = 128, fit: str = "stretch",
            skip_bad: bool = False, workers: int | None = None,
            progress: Callable[[int, int], None] | None = None,
            max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Path, str]:
    """Decode and resize every image of `source` into a store at `out`.

    Returns (path, what happened: 'new', 'resumed' or 'reused'). Raises BadInputError listing
    unreadable or missing images unless skip_bad, which drops them and records them. Images whose
    header states more than `max_pixels` pixels are unreadable (never decoded).
    """
    out = Path(out)
    if size < 8 or size > 1024:
        raise BadInputError(f"--size must be between 8 and 1024 pixels, got {size}")
    if fit not in FITS:
        raise BadInputError(f"--fit must be one of {', '.join(FITS)}, got '{fit}'")
    if max_pixels < 1:
        raise BadInputError(f"--max-pixels must be at least 1, got {max_pixels}")
    require_folder_or_absent(out)  # an existing file: refused before any work (not a crash in iterdir)
    # the whole prepare holds the store's lock: a second prepare into the same folder (say with another
    # --size) would re-create images.npy under this one's memory map, which kills it with SIGBUS
    with exclusive(out, "preparing"):
        return _prepare(source, out, size, fit, skip_bad, workers, progress, max_pixels)


def _prepare(source: Source, out: Path, size: int, fit: str, skip_bad: bool, workers: int | None,
             progress: Callable[[int, int], None] | None, max_pixels: int) -> tuple[Path, str]:
    fingerprint = source.fingerprint()
    state = _check_out(out, fingerprint, size, fit, str(source.location))
    if state == "reuse":
        return out, "reused"
    table = source.table.reset_index(drop=True)
    n = len(table)
    locators = table["locator"].tolist()

    missing = set(source.reader.missing(locators))
    if missing and not skip_bad:
        rows = table.loc[table["locator"].isin(missing), "id"].tolist()
        raise BadInputError(f"{source.location}: {len(rows)} of {n} image(s) missing: {preview(rows)} "
                            f"(looked for {source.reader.where()}; --skip-bad drops them)")

    out.mkdir(parents=True, exist_ok=True)
    images_path, progress_path = out / IMAGES_FILE, out / PROGRESS_FILE
    chunks = [list(range(s, min(s + CHUNK, n))) for s in range(0, n, CHUNK)]
    done: set[int] = set()
    failures: dict[int, str] = {int(p): "missing" for p in np.flatnonzero(table["locator"].isin(missing))}
    if state == "resume" and images_path.exists():
        prog = read_json(progress_path)
        done = set(prog["done"])
        failures.update({int(k): v for k, v in prog["failures"].items()})
        _retry_over_limit(failures, done, chunks, max_pixels, prog.get("max_pixels", DEFAULT_MAX_PIXELS))
    else:
        _allocate(images_path, n, size)

    def save_progress() -> None:
        _fsync(images_path)  # the pixels of every chunk called done are on disk before the record is
        write_json(progress_path, {"fingerprint": fingerprint, "size": size, "fit": fit, "n": n,
                                   "max_pixels": max_pixels, "done": sorted(done),
                                   "failures": {str(k): v for k, v in failures.items()}})

    save_progress()
    todo = [c for c in range(len(chunks)) if c not in done]
    workers = max(1, min(workers or cpu_count(), len(todo) or 1))
    finished = sum(len(chunks[c]) for c in done)
    if progress:
        progress(finished, n)

    def task(c: int):
        pos = [p for p in chunks[c] if p not in failures]
        return (source.reader, [locators[p] for p in pos], pos, str(images_path), size, fit, max_pixels)

    last_save = time.monotonic()
    if workers > 1:
        source.reader.close()  # each worker opens its own handle (an HDF5 handle must not cross a fork)
    results = map_ordered(_decode_chunk, (task(c) for c in todo), workers)
    try:
        for c, chunk_failures in zip(todo, results):
            failures.update(chunk_failures)
            done.add(c)
            finished += len(chunks[c])
            if progress:
                progress(finished, n)
            if time.monotonic() - last_save > PROGRESS_EVERY:
                save_progress()
                last_save = time.monotonic()
    finally:  # also on Ctrl-C: the chunks finished so far are not decoded again
        save_progress()

    if failures and not skip_bad:
        detail = [f"{table.at[p, 'id']} ({r})" for p, r in sorted(failures.items())]
        raise BadInputError(f"{source.location}: {len(failures)} of {n} image(s) could not be read: "
                            f"{preview(detail)} (--skip-bad drops them; decoded images are kept for the re-run)")
    keep = np.array([p not in failures for p in range(n)])
    # no copy of a 400k-row table when every image was read
    rows = (table if keep.all() else table.loc[keep]).assign(index=np.flatnonzero(keep))
    if rows.empty:
        raise BadInputError(f"{source.location}: none of the {n} images could be read")
    with atomic_path(out / ROWS_FILE) as tmp:
        safe_to_csv(rows, tmp, index=False)
        rows_sha = sha256_file(tmp)
    skipped = [{"id": table.at[p, "id"], "locator": locators[p], "reason": r} for p, r in sorted(failures.items())]
    labels = rows["label"].astype(int)
    write_json(out / STORE_FILE, {
        "store_version": STORE_VERSION,
        "lesionlab_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "size": size,
        "fit": fit,
        "n": int(len(rows)),
        "counts": {"malignant": int((labels == 1).sum()), "benign": int((labels == 0).sum())},
        "source": {"format": source.format, "location": str(source.location), "fingerprint": fingerprint},
        "skipped": skipped,
        "content_hash": _content_hash(rows_sha, size, fit, fingerprint),
    })
    progress_path.unlink(missing_ok=True)
    return out, "resumed" if state == "resume" else "new"


