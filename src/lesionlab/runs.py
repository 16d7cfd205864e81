"""Reading finished run folders back: config, run info, metrics, predictions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from .errors import BadInputError
from .fileio import csv_restore, read_json

RUN_FILES = ("config.yaml", "run.json", "metrics.json")


def is_complete_run(path: Path | str) -> bool:
    return all((Path(path) / f).exists() for f in RUN_FILES)


@dataclass
class Run:
    path: Path
    config: dict
    info: dict
    metrics: dict

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not is_complete_run(path):
            raise BadInputError(f"{path}: not a complete run folder (needs {', '.join(RUN_FILES)})")
        config = yaml.safe_load((path / "config.yaml").read_text())
        return cls(path, config, read_json(path / "run.json"), read_json(path / "metrics.json"))

    @property
    def name(self) -> str:
        return self.config.get("name") or self.info.get("name") or self.path.name

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    def predictions(self, split: str | None = None) -> pd.DataFrame:
        # ids were written formula-safe (fileio.csv_safe): restored, they match the store's ids
        df = csv_restore(pd.read_csv(self.path / "predictions.csv", dtype={"id": str}))
        return df[df["split"] == split].reset_index(drop=True) if split else df


def find_runs(root: str | Path) -> list[Run]:
    """Every complete run folder at or below `root`, in path order."""
    root = Path(root)
    if not root.exists():
        raise BadInputError(f"{root}: no such folder")
    paths = [root] if is_complete_run(root) else sorted(p.parent for p in root.rglob("metrics.json")
                                                        if is_complete_run(p.parent) and not p.parent.name.startswith("."))
    return [Run.load(p) for p in paths]
