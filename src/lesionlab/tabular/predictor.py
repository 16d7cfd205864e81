"""A tabular run folder scoring new rows: features rebuilt from the rows given together (patient
statistics over their patients), the fold models averaged, and for a fused run the image model's
scores of the same rows fused in as at training."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import BadInputError
from ..fileio import read_json
from .engines import Engine, get_engine
from .features import FeatureSpec, build_features
from .fusion import rank_average
from .model import predict_average

MODEL_DIR = "model"
SPEC_FILE = "model.json"
REFERENCE_FILE = "late_fusion_reference.npz"


@dataclass
class TabularPredictor:
    """Scores rows (a table with the run's metadata columns), not images: predict branches on `takes`."""

    path: Path
    spec: FeatureSpec
    engine: Engine
    models: list[Any]
    threshold: float
    fusion: str | None
    image: dict | None                  # the image run's record, for fused runs
    reference: dict | None = None       # late fusion: the train pool's out-of-fold scores
    takes: str = "rows"

    @property
    def fused(self) -> bool:
        return self.image is not None

    def image_predictor(self, device: str = "auto"):
        """The image model this run was trained with (checked unchanged), scoring images."""
        from ..runs.predictor import load_predictor
        from .image import check_same_image_run

        run = check_same_image_run(self.image, str(self.path))
        return load_predictor(run.path, device)

    def probabilities_rows(self, table: pd.DataFrame, image_prob: np.ndarray | None = None,
                           where: str = "input") -> np.ndarray:
        table = table.reset_index(drop=True)
        if self.fused and image_prob is None:
            raise BadInputError(f"{where}: {self.path} is fused with an image model; its image scores are needed")
        stacked = self.fused and self.fusion == "stack"
        X = build_features(table, self.spec, image_prob if stacked else None, where=where)
        tab = predict_average(self.engine, self.models, X)
        if self.fused and self.fusion == "late":
            return rank_average(image_prob, tab, self.reference["image"], self.reference["tabular"])
        return tab


def load_tabular_predictor(run, device: str = "auto") -> TabularPredictor:
    folder = run.path / MODEL_DIR
    doc = read_json(run.file(f"{MODEL_DIR}/{SPEC_FILE}"))
    engine = get_engine(doc["engine"])
    models = []
    for f in range(int(doc["n_folds"])):
        path = folder / f"fold-{f}{engine.suffix}"
        if not path.exists():
            raise BadInputError(f"{run.path}: no {MODEL_DIR}/{path.name}; the run folder is incomplete")
        models.append(engine.load(path))
    reference = None
    if doc.get("fusion") == "late" and doc.get("image"):
        with np.load(run.file(f"{MODEL_DIR}/{REFERENCE_FILE}")) as ref:
            reference = {"image": ref["image"], "tabular": ref["tabular"]}
    return TabularPredictor(run.path, FeatureSpec.from_dict(doc["features"]), engine, models, float(doc["threshold"]),
                            doc.get("fusion"), doc.get("image"), reference)
