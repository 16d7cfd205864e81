"""Atomic writes: a file or folder is either complete or absent, never half-written; and locks, so
that two lesionlab processes never write the same folder at once.

Also the two guards every file lesionlab writes or reads from an untrusted folder goes through:
CSV cells that a spreadsheet would run as formulas are neutralised (and restored on reading),
and checkpoints are loaded as tensors and plain values only, never as arbitrary pickled objects.
"""
from __future__ import annotations

import contextlib
import errno
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

from .errors import BadInputError, ExistsError, LesionLabError, first_line

# ---------------------------------------------------------------- where writing fails

# errno -> the reason a location cannot be written, in words. EROFS, ENOSPC and EDQUOT can only
# come from writing; EACCES and EPERM also from reading, so only the write primitives below name them.
_UNWRITABLE = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
WRITE_ONLY_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def _existing_folder(path: str | os.PathLike) -> Path:
    """The nearest folder that exists at or above `path`: where the user has to look."""
    p = Path(os.path.abspath(path))
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


def unwritable(e: OSError, path: str | os.PathLike | None = None) -> LesionLabError | None:
    """'cannot write to DIR: read-only file system' for an OSError that says a location cannot be
    written (None for any other error); DIR is the nearest existing folder of the path it names."""
    reason = _UNWRITABLE.get(e.errno) if e.errno is not None else None
    where = path if path is not None else e.filename
    if reason is None:
        return None
    if where is None:  # a write to an open file names none (a disk that filled up meanwhile)
        return LesionLabError(f"cannot write the output: {reason}")
    return LesionLabError(f"cannot write to {_existing_folder(os.fsdecode(where))}: {reason}")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn the OSError of a location that cannot be written into unwritable's one-line error."""
    try:
        yield
    except OSError as e:
        err = unwritable(e, e.filename if e.filename is not None else path)
        if err is None:
            raise
        raise err from None


def make_dirs(path: str | os.PathLike) -> Path:
    """mkdir -p for a new output's folder, with unwritable's error where that is not possible."""
    path = Path(path)
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- hidden names beside an output

# A file or folder name may have 255 bytes; the hidden names made beside an output (".NAME.lock",
# ".NAME.partial-XXXXXXXX", ".NAME.XXXXXXXX.tmp") add up to 25, so a long NAME is shortened in
# them, to a prefix and a hash of the whole name (the same for every process: locks must agree).
_HIDDEN_STEM_MAX = 160


def hidden_name(name: str, tag: str) -> str:
    """'.NAME.TAG', NAME shortened (deterministically) when the result could pass 255 bytes."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > _HIDDEN_STEM_MAX:
        digest = hashlib.sha1(raw).hexdigest()[:12]
        name = raw[:_HIDDEN_STEM_MAX - 13].decode("utf-8", "ignore") + "~" + digest
    return f".{name}.{tag}"


def absolute(path: str | os.PathLike) -> Path:
    """The output path made absolute, so that `--out .` names a folder with a name and a parent
    (its lock and staging folder go beside it, not into it)."""
    p = Path(os.path.abspath(path))
    if not p.name:
        raise BadInputError(f"{path}: the root folder cannot be an output; name a folder or file below it")
    return p


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
    path = absolute(path)
    if path.is_dir():
        raise ExistsError(f"{path}: is a folder; name a file to write (lesionlab never replaces a folder by a file)")
    try:
        with writing(path):
            fd, tmp = tempfile.mkstemp(prefix=hidden_name(path.name, ""), suffix=".tmp", dir=path.parent)
    except FileNotFoundError:
        raise LesionLabError(f"{path}: cannot be written, its folder {path.parent} does not exist "
                             "(was it moved or removed while lesionlab was writing?)") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with writing(path):
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
    """A JSON file's value; a damaged one (cut short, not text, not JSON) is named as such."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{path}: not valid JSON, the file is damaged or not lesionlab's ({first_line(e, 120)})") from None


# A YAML alias (*name) stands for the whole value its anchor (&name) marks, so a few hundred bytes of
# nested aliases can stand for billions of values ("billion laughs"): building, validating or
# printing such a value takes all the memory there is. Configs use aliases for a few shared blocks,
# so what aliases add beyond the document's own nodes is limited to this many before any value is built.
MAX_ALIAS_EXPANSION = 10_000


def _expanded_size(node, origin: str) -> tuple[int, int]:
    """(nodes with every alias expanded, distinct nodes) of a composed YAML document."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(n) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise BadInputError(f"{origin}: a YAML alias refers to a value that holds it (a loop); write the values out")
        on_path.add(key)
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        else:
            total = 1
        on_path.discard(key)
        sizes[key] = total
        return total

    return size(node), len(sizes)


def read_yaml(path: str | os.PathLike, what: str = "YAML file") -> Any:
    """A YAML file's value (safe types only), refusing a file that is not UTF-8 text and aliases
    that would expand past MAX_ALIAS_EXPANSION nodes, before any value is built."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise BadInputError(f"{path}: is a folder, not a {what}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: not a text file (UTF-8); a {what} is text "
                            f"(byte {e.start} is 0x{data[e.start]:02x})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded, distinct = _expanded_size(node, str(path))
        if expanded - distinct > MAX_ALIAS_EXPANSION:
            raise BadInputError(f"{path}: its YAML aliases (*name) expand to more than {MAX_ALIAS_EXPANSION:,} values "
                                f"({expanded:.3g} in all; a 'billion laughs' file?); write the values out instead")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise BadInputError(f"{path}: not valid YAML ({first_line(e, 200)})") from None
    except RecursionError:
        raise BadInputError(f"{path}: nested too deeply to be a {what}") from None
    finally:
        loader.dispose()


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
    return folder.parent / hidden_name(folder.name, "lock")


@contextlib.contextmanager
def held_lock(path: str | os.PathLike, wait: float | None = None) -> Iterator[bool]:
    """Every lock lesionlab takes: the OS's exclusive lock (flock, through filelock) on the lock file
    `path`, held for the block. It goes with its process, so a killed process leaves none.

    wait: seconds to wait for another process to release it (None: as long as it takes; 0: not at
    all). Yields True once held, or False when another process still holds it after `wait`: the
    block then runs without it, and decides what to do (refuse, leave the work to the holder).
    A lock file that cannot be created raises its OSError."""
    lock = FileLock(os.fspath(path), timeout=-1 if wait is None else wait)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike, doing: str = "writing") -> Iterator[None]:
    """Hold the exclusive lock of `folder` for the block; if another process holds it, raise at once
    (an ExistsError naming the folder) instead of waiting for it, or worse, writing beside it."""
    folder = absolute(folder)
    make_dirs(folder.parent)
    with contextlib.ExitStack() as stack:
        with writing(folder.parent):
            held = stack.enter_context(held_lock(lock_file(folder), wait=0))
        if not held:
            raise ExistsError(f"{folder}: another lesionlab process is {doing} this folder right now "
                              f"(it holds {lock_file(folder)}); wait for it to finish or choose another folder")
        yield


def _refuse_taken(final: Path, is_complete: Callable[[Path], bool], what: str,
                  replace: Callable[[Path], bool] | None = None) -> None:
    """Refuse a `final` that holds anything, unless `replace` (the user's --overwrite) recognises
    it as an earlier output of the same kind, which may then be replaced."""
    taken = final.exists() and (not final.is_dir() or any(final.iterdir()))
    if not taken:
        return
    if replace is not None:
        if final.is_dir() and replace(final):
            return
        raise ExistsError(f"{final}: is not an earlier {what}; --overwrite replaces only that, so this folder is "
                          "left as it is; choose another output folder (--out)")
    if is_complete(final):
        raise ExistsError(f"{final}: already holds {what}; choose another output folder (--out); "
                          f"lesionlab never overwrites {what}")
    raise ExistsError(f"{final}: exists and is not empty; choose a new or empty output folder (--out) for {what}")


def check_free(final: str | os.PathLike, is_complete: Callable[[Path], bool] = lambda p: False,
               what: str = "a result", replace: Callable[[Path], bool] | None = None) -> None:
    """Raise the error staged_dir would raise now, without taking the folder (an early check)."""
    final = absolute(final)
    with exclusive(final):
        _refuse_taken(final, is_complete, what, replace)


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike, is_complete: Callable[[Path], bool] = lambda p: False,
               what: str = "a result", replace: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Build a folder aside and publish it whole at `final` when the block succeeds, else leave nothing.

    The lock of `final` is held from the first check to the publication, so two processes writing
    the same folder cannot mix their files: the second is refused at once. `final` must be absent or
    an empty folder (`is_complete` names what counts as a finished result, for the message). The
    staging folder is unique to this call (.NAME.partial-XXXXXXXX beside `final`); os.replace
    publishes it atomically, after checking `final` again. `replace` (the user's --overwrite) says
    whether a folder at `final` is an earlier output of the same kind: only such a folder is
    replaced, and only once the new one is complete; any other is refused and named."""
    final = absolute(final)
    with exclusive(final):
        _refuse_taken(final, is_complete, what, replace)
        partial = hidden_name(final.name, "partial-")
        for stale in final.parent.glob(glob.escape(partial) + "*"):  # left by a killed process: we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        with writing(final.parent):
            staging = Path(tempfile.mkdtemp(prefix=partial, dir=final.parent))
        try:
            os.chmod(staging, 0o777 & ~process_umask())
            yield staging
            old = None
            if replace is not None and final.exists():
                _refuse_taken(final, is_complete, what, replace)  # still an earlier output: we hold the lock
                old = Path(tempfile.mkdtemp(prefix=hidden_name(final.name, "replaced-"), dir=final.parent))
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


def require_file_out(path: str | os.PathLike, overwrite: bool, flag: str = "--out") -> None:
    """Refuse an output file path that names a folder, or an existing file without --overwrite
    (before any work starts)."""
    path = Path(path)
    if path.is_dir():
        raise ExistsError(f"{path}: is a folder; {flag} names a file to write (lesionlab never replaces a folder by a file)")
    if path.exists() and not overwrite:
        raise ExistsError(f"{path}: exists; choose another {flag} or pass --overwrite")


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
    write_text(path, str(safe_to_csv(df, **to_csv)))  # no target: the text itself
