"""Atomic writes: a file or folder is either complete or absent, never half-written; and locks, so
that two lesionlab processes never write the same folder at once."""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from filelock import FileLock, Timeout

from .errors import ExistsError, LesionLabError


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


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


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
               what: str = "a result") -> Iterator[Path]:
    """Build a folder aside and publish it whole at `final` when the block succeeds, else leave nothing.

    The lock of `final` is held from the first check to the publication, so two processes writing
    the same folder cannot mix their files: the second is refused at once. `final` must be absent or
    an empty folder (`is_complete` names what counts as a finished result, for the message). The
    staging folder is unique to this call (.NAME.partial-XXXXXXXX beside `final`); os.replace
    publishes it atomically, after checking `final` again."""
    final = Path(final)
    with exclusive(final):
        _refuse_taken(final, is_complete, what)
        for stale in final.parent.glob(f".{glob.escape(final.name)}.partial-*"):  # left by a killed process: we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
        try:
            os.chmod(staging, 0o777 & ~process_umask())
            yield staging
            _refuse_taken(final, is_complete, what)
            if final.exists():
                final.rmdir()  # an empty folder, checked just now under the lock
            os.replace(staging, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
