"""Writing run folders: built in a staging folder beside the target and moved into place only
when complete, so a run folder is whole or absent and an existing one is never overwritten."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .. import __version__
from ..errors import ExistsError
from ..fileio import check_free, exclusive, staged_dir, write_csv, write_json, write_yaml
from . import format as fmt
from .kinds import run_kind
from .reader import is_complete_run
from .records import RunInfo, RunMetrics


def check_new_run_folder(out: Path) -> None:
    """Refuse a target that already holds a run or anything else, or that another process is
    writing (before any work starts)."""
    check_free(out, is_complete_run, "a run")


class RunWriter:
    """with RunWriter(out, "train") as w: w.table(...); w.checkpoint(...); w.finish(config, info, metrics)

    Leaving the block without finish() (or with an exception) removes the staging folder."""

    def __init__(self, out: str | Path, kind: str, into_existing: bool = False):
        """into_existing: `out` already holds this run's parts (a cv folder's plan and folds); the
        run's own files are staged aside and moved in at the end, metrics.json last, so the folder
        still counts as complete only once everything is there."""
        self.out = Path(out)
        self.kind = run_kind(kind).name  # a kind no module declares is refused before anything is written
        self.format = fmt.format_block(kind)
        self.into_existing = into_existing
        self.staging: Path | None = None
        self._finished = False
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "RunWriter":
        if self.into_existing:
            # the cv folder holds its plan and folds already: the run's own files are staged inside it
            self._stack.enter_context(exclusive(self.out, "finishing"))
            if is_complete_run(self.out):
                raise ExistsError(f"{self.out}: already holds a complete run; lesionlab never overwrites a run")
            self.staging = self.out / ".finish.partial"
            shutil.rmtree(self.staging, ignore_errors=True)  # a stale one from an interrupted run of ours
            self.staging.mkdir(parents=True)
        else:
            # under the target's lock, in a staging folder of its own; published whole (fileio.staged_dir)
            self.staging = self._stack.enter_context(staged_dir(self.out, is_complete_run, "a run"))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.into_existing:
            with self._stack:
                if exc_type is None and self._finished:
                    self._move_in()
                elif self.staging is not None:
                    shutil.rmtree(self.staging, ignore_errors=True)
        elif exc_type is None and not self._finished:
            self._stack.__exit__(RuntimeError, RuntimeError("unfinished"), None)  # staged_dir removes its staging folder
        else:
            return bool(self._stack.__exit__(exc_type, exc, tb))
        if exc_type is None and not self._finished:
            raise RuntimeError(f"{self.out}: RunWriter left without finish(); nothing was published")
        return False

    def _move_in(self) -> None:
        assert self.staging is not None
        entries = sorted(self.staging.iterdir(), key=lambda p: p.name == fmt.METRICS)  # metrics.json last
        for entry in entries:
            target = self.out / entry.name
            if target.is_dir() and entry.is_dir():
                shutil.rmtree(target)  # figures of an earlier, unfinished attempt
            os.replace(entry, target)
        self.staging.rmdir()

    @property
    def path(self) -> Path:
        assert self.staging is not None, "use RunWriter as a context manager"
        return self.staging

    def table(self, name: str, frame: pd.DataFrame, float_format: str | None = "%.6g") -> Path:
        path = self.path / name
        write_csv(path, frame, float_format=float_format)
        return path

    def checkpoint(self, payload: dict) -> None:
        # plain types and tensors only, so that readers load it with weights_only=True
        torch.save({**payload, "format_version": fmt.FORMAT_VERSION, "lesionlab_version": __version__},
                   self.path / fmt.CHECKPOINT)

    def figure_path(self, key: str) -> Path:
        folder = self.path / fmt.FIGURES_DIR
        folder.mkdir(exist_ok=True)
        return folder / fmt.FIGURES[key][0]

    def subfolder(self, name: str) -> Path:
        folder = self.path / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def finish(self, config: dict, info: RunInfo, metrics: RunMetrics) -> None:
        write_yaml(self.path / fmt.CONFIG, config)
        stamped: RunInfo = {"format": self.format, "lesionlab_version": __version__, **info}
        write_json(self.path / fmt.INFO, stamped)
        write_json(self.path / fmt.METRICS, metrics)  # last: its presence marks the run complete
        self._finished = True


def model_checkpoint(model: str, image_size: int, fit: str, state_dict: dict, threshold: float, threshold_rule: str,
                     prior_shift: dict | None, channels_last: bool, mean: tuple, std: tuple,
                     model_kwargs: dict | None = None, input_size: int = 0, interpolation: str = "bilinear",
                     **extra: Any) -> dict:
    """What a predictor needs to score new images exactly as the run scored its test set: images
    decoded at `image_size` with `fit`, enlarged to `input_size` (0 = not) with `interpolation`,
    normalised with `mean` and `std`."""
    return {"model": model, "model_kwargs": model_kwargs or {}, "image_size": int(image_size), "fit": fit,
            "mean": list(mean), "std": list(std), "input_size": int(input_size), "interpolation": interpolation,
            "state_dict": state_dict, "threshold": float(threshold),
            "threshold_rule": threshold_rule, "prior_shift": prior_shift, "channels_last": bool(channels_last), **extra}
