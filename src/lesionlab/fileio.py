"""Atomic writes: a file or folder is either complete or absent, never half-written.

Also the two guards every file lesionlab writes or reads from an untrusted folder goes through:
CSV cells that a spreadsheet would run as formulas are neutralised (and restored on reading),
and checkpoints are loaded as tensors and plain values only, never as arbitrary pickled objects.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import yaml

from .errors import BadInputError, ExistsError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths appear in metrics and configs
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def publish_dir(staging: Path, final: Path) -> None:
    """Move a finished staging folder onto `final` (which must be absent or empty)."""
    if final.exists():
        final.rmdir()  # only an empty folder may be replaced; the caller checked
    os.replace(staging, final)
    _fsync_dir(final.parent)


def require_folder_or_absent(path: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse an output folder path that names an existing file (before any work starts)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ExistsError(f"{flag} {path}: is an existing file; {flag} names a folder to create (or an empty one)")


# ---------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint's dict, loaded on the CPU with torch's weights-only unpickler.

    A checkpoint is a pickle, and unpickling an arbitrary one runs whatever code it names; run
    and generator folders come from other people, so only tensors and plain values (dicts,
    lists, numbers, strings) are loaded. Anything else is refused with the file's name."""
    import torch  # here, not at the top: decoding workers import this module and never need torch

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise BadInputError(f"{path}: checkpoint not found") from None
    except OSError as e:
        raise BadInputError(f"{path}: not a readable checkpoint ({e.strerror or e})") from None
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):  # neither torch's zip format nor a pickle
        raise BadInputError(f"{path}: not a readable checkpoint (neither torch's format nor a pickle)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise BadInputError(
            f"{path}: holds Python objects that lesionlab does not load{_refused_detail(e)}; loading them could "
            "run code, so the file may be unsafe. lesionlab checkpoints hold only tensors and plain values: "
            "use a checkpoint written by lesionlab from a source you trust") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:  # truncated, corrupt, not a checkpoint
        raise BadInputError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict):
        raise BadInputError(f"{path}: expected a checkpoint holding a dict, got a {type(state).__name__}")
    return state


def _refused_detail(err: Exception) -> str:
    """torch's one line that says what it refused, e.g. 'unsupported GLOBAL posix.system ...'."""
    for line in str(err).splitlines():
        if "GLOBAL" in line or "Unsupported operand" in line:
            return f" ({line.strip().rstrip('.')})"
    return ""


# ---------------------------------------------------------------- CSV cells safe for spreadsheets

# A cell starting with one of these is run as a formula by Excel, LibreOffice and Google Sheets
# (OWASP "CSV injection"). Such cells get a leading ' , the spreadsheet's own "this is text"
# mark, which it hides. Cells already starting with quotes before one of these get one more, so
# that reading back (strip one quote where quotes precede one of these) is the exact inverse.
FORMULA_START = "=+-@\t\r"
_NEEDS_QUOTE = re.compile(r"'*[=+\-@\t\r]")
_QUOTED = re.compile(r"'+[=+\-@\t\r]")


def _is_text(column: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)


def _text_cell_mask(column: pd.Series, pattern: re.Pattern) -> pd.Series:
    """True where the cell is a string matching `pattern` at its start (non-strings: False)."""
    is_str = column.map(lambda v: isinstance(v, str)) if pd.api.types.is_object_dtype(column) else column.notna()
    if not is_str.any():
        return is_str.astype(bool)
    matched = column[is_str].astype(str).str.match(pattern.pattern)
    return pd.Series(False, index=column.index).mask(is_str, matched).astype(bool)


def _map_text(df: pd.DataFrame, pattern: re.Pattern, change) -> pd.DataFrame:
    changed = {}
    for name in df.columns:
        column = df[name]
        if not _is_text(column):
            continue  # numbers stay numbers: -5 in a numeric column is not a formula
        mask = _text_cell_mask(column, pattern)
        if mask.any():
            column = column.copy()
            column[mask] = column[mask].map(change)
            changed[name] = column
    columns = [change(c) if isinstance(c, str) and pattern.match(c) else c for c in df.columns]
    if not changed and columns == list(df.columns):
        return df  # the common case: no copy of a large table
    out = df.copy()
    for name, column in changed.items():
        out[name] = column
    out.columns = columns
    return out


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with every text cell (and column name) that a spreadsheet would run as a formula
    prefixed with ' ; numeric columns untouched. `csv_restore` is its exact inverse."""
    return _map_text(df, _NEEDS_QUOTE, lambda v: "'" + v)


def csv_restore(df: pd.DataFrame) -> pd.DataFrame:
    """Undo `csv_safe` on a table read back from a CSV lesionlab wrote (ids then compare equal)."""
    return _map_text(df, _QUOTED, lambda v: v[1:])


def safe_to_csv(df: pd.DataFrame, target: Any = None, **to_csv: Any) -> str | None:
    """`df.to_csv(target, ...)` with formula-like text neutralised (see `csv_safe`). A text cell
    holding a carriage return is only quoted by Python's csv writer when \\r ends lines, so such
    a table is written with \\r\\n line ends (else a reader would split its row in two)."""
    safe = csv_safe(df)
    to_csv.setdefault("lineterminator", "\r\n" if _has_carriage_return(safe) else "\n")
    return safe.to_csv(target, **to_csv)


def _has_carriage_return(df: pd.DataFrame) -> bool:
    return any(isinstance(c, str) and "\r" in c for c in df.columns) or any(
        _text_cell_mask(df[name], re.compile(r".*\r", re.DOTALL)).any() for name in df.columns if _is_text(df[name]))


def write_csv(path: str | os.PathLike, df: pd.DataFrame, **to_csv: Any) -> None:
    """Write `df` atomically as CSV, formula-like text neutralised (see `safe_to_csv`)."""
    to_csv.setdefault("index", False)
    write_text(path, safe_to_csv(df, **to_csv))
