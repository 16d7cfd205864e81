"""Atomic writes: a file or folder is either complete or absent, never half-written."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import yaml

if TYPE_CHECKING:
    import pandas as pd


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


def write_csv(path: str | os.PathLike, frame: "pd.DataFrame", float_format: str | None = None) -> None:
    write_text(path, frame.to_csv(index=False, float_format=float_format))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint of plain types and tensors. weights_only=True: unpickling a file someone sent
    could otherwise run arbitrary code."""
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        from .errors import BadInputError

        raise BadInputError(f"{path}: holds objects other than tensors and plain values, which lesionlab refuses to "
                            f"load (they could run code); was it written by lesionlab? ({str(e).splitlines()[0]})") from None
    if not isinstance(ckpt, dict):
        from .errors import BadInputError

        raise BadInputError(f"{path}: expected a lesionlab checkpoint (a mapping), got {type(ckpt).__name__}")
    return ckpt
