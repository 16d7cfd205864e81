"""Reading run folders back: one class for every reader (report, compare, predict, sweep, synth)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, cast

import pandas as pd

from ..errors import BadInputError, LesionLabError
from ..fileio import csv_restore, load_checkpoint, read_json, read_yaml
from . import format as fmt
from .kinds import RunKind, find_kind, kind_names
from .records import RunInfo, RunMetrics, SideMetrics


def is_complete_run(path: str | os.PathLike) -> bool:
    return all((Path(path) / f).exists() for f in fmt.REQUIRED)


@dataclass
class Run:
    path: Path
    config: dict
    info: RunInfo        # as read: checked to be a mapping, its keys by whoever uses them
    metrics: RunMetrics

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Run":
        path = Path(path)
        if not is_complete_run(path):
            raise BadInputError(f"{path}: not a complete run folder (needs {', '.join(fmt.REQUIRED)})")
        config = read_yaml(path / fmt.CONFIG, "run config") or {}
        info, metrics = read_json(path / fmt.INFO), read_json(path / fmt.METRICS)
        for name, value in ((fmt.CONFIG, config), (fmt.INFO, info), (fmt.METRICS, metrics)):
            if not isinstance(value, dict):  # damaged, or not lesionlab's
                raise BadInputError(f"{path / name}: expected a mapping of keys to values, got a {type(value).__name__}; "
                                    "the run folder is damaged")
        run = cls(path, config, cast(RunInfo, info), cast(RunMetrics, metrics))  # mappings (checked above)
        version = run.format_version
        if version > fmt.FORMAT_VERSION:
            raise BadInputError(f"{path / fmt.INFO}: run format version {version}, but this lesionlab reads up to "
                                f"{fmt.FORMAT_VERSION}; upgrade lesionlab to read it")
        if find_kind(run.kind) is None:
            raise BadInputError(f"{path / fmt.INFO}: unknown run kind '{run.kind}'; known: {', '.join(kind_names())}")
        return run

    @property
    def _format(self) -> Mapping[str, Any]:
        block = self.info.get("format", {})
        if not isinstance(block, dict):
            raise BadInputError(f"{self.path / fmt.INFO}: its 'format' is not a mapping; the run folder is damaged")
        return block

    @property
    def format_version(self) -> int:
        # folders written before the format was versioned are version 0: the train layout of version 1
        version = self._format.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise BadInputError(f"{self.path / fmt.INFO}: format version {version!r:.40} is not a whole number; "
                                "the run folder is damaged")
        return version

    @property
    def kind(self) -> str:
        return str(self._format.get("kind", "train"))

    @property
    def declared(self) -> RunKind:
        """Its kind's declaration (kinds.py): what the folder holds and scores."""
        kind = find_kind(self.kind)
        if kind is None:
            raise BadInputError(f"{self.path / fmt.INFO}: unknown run kind '{self.kind}'; known: {', '.join(kind_names())}")
        return kind

    def _info_at(self, keys: tuple[str, ...]) -> Any:
        value: Any = self.info
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def side(self, split: str) -> SideMetrics:
        """metrics.json's metrics of one side (val, test, oof, ...); KeyError when the run has none."""
        sides: Mapping[str, Any] = self.metrics
        return sides[split]

    @property
    def name(self) -> str:
        return self.config.get("name") or self.info.get("name") or self.path.name

    @property
    def fold_sha256(self) -> str | None:
        """The fingerprint of the fold assignment behind the out-of-fold predictions, where its kind's
        declaration says run.json keeps it (RunKind.fold_hash)."""
        return self._info_at(self.declared.fold_hash)

    @property
    def group_rule(self) -> str | None:
        """The split's group column (lesion_id, patient_id) that intervals resample whole; None when unknown."""
        for key in self.declared.group_keys:
            value = self._info_at((key,))
            if value:
                return value
        return None

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    def file(self, name: str) -> Path:
        path = self.path / name
        if not path.exists():
            raise BadInputError(f"{self.path}: no {name} in this {self.kind} run folder")
        return path

    def predictions(self, split: str | None = None) -> pd.DataFrame:
        df = read_table(self.file(fmt.PREDICTIONS))
        return df[df["split"] == split].reset_index(drop=True) if split else df

    def oof(self) -> pd.DataFrame:
        """A cv or tabular run's out-of-fold predictions: id, group, fold, repeat, label, prob, threshold."""
        table = read_table(self.file(fmt.OOF))
        if "threshold" not in table:  # a tabular run keeps its one threshold, chosen on val, in run.json
            table["threshold"] = float(self.info.get("threshold", 0.5))
        return table

    def history(self) -> pd.DataFrame:
        return pd.read_csv(self.file(fmt.HISTORY))

    def fold_runs(self) -> list["Run"]:
        """A cv run's complete folds (folds/NAME/, each a train run), in folder order."""
        return [Run.load(p.parent) for p in sorted((self.path / fmt.FOLDS_DIR).glob(f"*/{fmt.INFO}"))]

    def checkpoint(self) -> dict:
        return load_checkpoint(self.file(fmt.CHECKPOINT))

    def figure(self, key: str) -> Path | None:
        path = self.path / fmt.FIGURES_DIR / fmt.FIGURES[key][0]
        return path if path.exists() else None


def read_table(path: Path) -> pd.DataFrame:
    """A CSV that lesionlab wrote, with ids kept as text; formula-safe cells (fileio.csv_safe)
    restored, so that ids compare equal with the store's."""
    return csv_restore(pd.read_csv(path, dtype={"id": str, "group": str}, keep_default_na=False, na_values=[""]))


def oof_arrays(oof: pd.DataFrame) -> tuple:
    """(ids, labels, groups, probs per repeat, thresholds per repeat) of an oof table, aligned by id."""
    import numpy as np

    repeats = sorted(oof["repeat"].unique())
    per = [oof[oof["repeat"] == r].sort_values("id", kind="mergesort").reset_index(drop=True) for r in repeats]
    first = per[0]
    for p in per[1:]:
        if not np.array_equal(p["id"].to_numpy(), first["id"].to_numpy()):
            raise BadInputError("oof.csv: the repeats hold different images")
    return (first["id"].to_numpy(), first["label"].to_numpy().astype(int), first["group"].astype(str).to_numpy(),
            [p["prob"].to_numpy(dtype=float) for p in per], [p["threshold"].to_numpy(dtype=float) for p in per])


def load_run(path: str | os.PathLike, kinds: tuple[str, ...] | None = None) -> Run:
    run = Run.load(path)
    if kinds and run.kind not in kinds:
        raise BadInputError(f"{path}: a {run.kind} run folder; expected {' or '.join(kinds)}")
    return run


def find_runs(root: str | Path, kinds: tuple[str, ...] | None = ("train",),
              damaged: list[tuple[Path, str]] | None = None) -> list[Run]:
    """Every complete run folder at or below `root` (of the given kinds), in path order.

    The folds inside a cv folder are runs of their own, found when `root` is the cv folder's
    folds/ or one fold; from above, the cv folder stands for them. A run folder that cannot be
    read raises its error, unless `damaged` is given: then it is left out and listed there
    (folder, reason), for readers that summarise many runs (report)."""
    root = Path(root)
    if not root.exists():
        raise BadInputError(f"{root}: no such folder")
    found: list[Run] = []
    if is_complete_run(root):
        found.append(Run.load(root))
    else:
        skip: list[Path] = []
        for p in sorted(p.parent for p in root.rglob(fmt.METRICS)):
            if not is_complete_run(p) or any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            if any(s in p.parents for s in skip):
                continue  # inside a cv or ensemble folder already found
            try:
                run = Run.load(p)
            except LesionLabError as e:
                if damaged is None:
                    raise
                damaged.append((p, str(e)))
                skip.append(p)  # a damaged cv folder's folds are not runs of their own either
                continue
            if run.kind != "train":
                skip.append(p)
            found.append(run)
    return [r for r in found if kinds is None or r.kind in kinds]
