"""Atomic writes: a file or folder is either complete or absent, never half-written; and locks, so
that two lesionlab processes never write the same folder at once.

Also the two guards every file lesionlab writes or reads from an untrusted folder goes through:
CSV cells that a spreadsheet would run as formulas are neutralised (and restored on reading),
and checkpoints are loaded as tensors and plain values only, never as arbitrary pickled objects.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import yaml
from filelock import FileLock, Timeout

from .errors import BadInputError, ExistsError, LesionLabError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.lru_cache(maxsize=None)
def process_umask() -> int:
    """This process's umask, read once. mkstemp and mkdtemp create 0600 files and 0700 folders
    whatever the umask; what they make is given the mode an ordinary open() or mkdir() would."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:  # Linux: read without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o077)  # elsewhere reading it means setting it: set it back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The folder must exist: it is never created here, so that a file meant for a run folder that was
    published or removed meanwhile fails instead of silently re-creating the folder. Callers that
    write a new output create its folder themselves."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError:
        raise LesionLabError(f"{path}: cannot be written, its folder {path.parent} does not exist "
                             "(was it moved or removed while lesionlab was writing?)") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~process_umask())
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


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still runs (a worker's claim or trial it left can be taken over
    only when it is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, but another user's
    return True


def lock_file(folder: Path) -> Path:
    """The lock of `folder`: beside it, so it can be taken before the folder exists."""
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike, doing: str = "writing") -> Iterator[None]:
    """Hold the exclusive lock of `folder` for the block; if another process holds it, raise at once
    (an ExistsError naming the folder) instead of waiting for it, or worse, writing beside it.
    The lock is the OS's (flock): it goes with its process, so a killed process leaves none."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file(folder))
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise ExistsError(f"{folder}: another lesionlab process is {doing} this folder right now "
                          f"(it holds {lock_file(folder)}); wait for it to finish or choose another folder") from None
    try:
        yield
    finally:
        lock.release()


def _refuse_taken(final: Path, is_complete: Callable[[Path], bool], what: str) -> None:
    if is_complete(final):
        raise ExistsError(f"{final}: already holds {what}; choose another output folder (--out); "
                          f"lesionlab never overwrites {what}")
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ExistsError(f"{final}: exists and is not empty; choose a new or empty output folder (--out) for {what}")


def check_free(final: str | os.PathLike, is_complete: Callable[[Path], bool] = lambda p: False,
               what: str = "a result") -> None:
    """Raise the error staged_dir would raise now, without taking the folder (an early check)."""
    final = Path(final)
    with exclusive(final):
        _refuse_taken(final, is_complete, what)


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike, is_complete: Callable[[Path], bool] = lambda p: False,
               what: str = "a result", replace: bool = False) -> Iterator[Path]:
    """Build a folder aside and publish it whole at `final` when the block succeeds, else leave nothing.

    The lock of `final` is held from the first check to the publication, so two processes writing
    the same folder cannot mix their files: the second is refused at once. `final` must be absent or
    an empty folder (`is_complete` names what counts as a finished result, for the message). The
    staging folder is unique to this call (.NAME.partial-XXXXXXXX beside `final`); os.replace
    publishes it atomically, after checking `final` again. With `replace` (the user's --overwrite)
    an existing folder at `final` is swapped out only once the new one is complete."""
    final = Path(final)
    with exclusive(final):
        if not replace:
            _refuse_taken(final, is_complete, what)
        for stale in final.parent.glob(f".{glob.escape(final.name)}.partial-*"):  # left by a killed process: we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
        try:
            os.chmod(staging, 0o777 & ~process_umask())
            yield staging
            old = None
            if replace and final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.replaced-", dir=final.parent))
                os.replace(final, old / final.name)
            _refuse_taken(final, is_complete, what)
            if final.exists():
                final.rmdir()  # an empty folder, checked just now under the lock
            os.replace(staging, final)
            _fsync_dir(final.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


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
_NEEDS_QUOTE = re.compile("'*[" + re.escape(FORMULA_START) + "]")
_QUOTED = re.compile("'+[" + re.escape(FORMULA_START) + "]")


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
