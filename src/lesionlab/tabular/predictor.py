"""A tabular run folder scoring new rows: features rebuilt from the rows given together (patient
statistics over their patients), the fold models averaged, and for a fused run the image model's
scores of the same rows fused in as at training. The "tabular" run kind is declared here (end)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..choices import ENGINES, FUSIONS
from ..errors import BadInputError, first_line, shown
from ..fileio import read_json, sha256_file
from ..runs import format as fmt
from ..runs.kinds import RunKind, register_kind
from ..runs.reader import Run
from .engines import Engine, get_engine
from .features import FeatureSpec, build_features
from .fusion import image_logit, rank_average
from .model import predict_average

MODEL_DIR = "model"
SPEC_FILE = "model.json"
REFERENCE_FILE = "late_fusion_reference.npz"
IMPORTANCE = "importance.csv"


@dataclass
class TabularPredictor:
    """Scores rows (a table with the run's metadata columns), not images: its kind takes "rows"."""

    path: Path
    spec: FeatureSpec
    engine: Engine
    models: list[Any]
    threshold: float
    fusion: str | None
    image: dict | None                  # the image run's record, for fused runs
    reference: dict | None = None       # late fusion: the train pool's out-of-fold scores

    @property
    def fused(self) -> bool:
        return self.image is not None

    def image_predictor(self, device: str = "auto"):
        """The image model this run was trained with (checked unchanged), scoring images."""
        from ..runs.predictor import load_predictor
        from .image import check_same_image_run

        if self.image is None:
            raise BadInputError(f"{self.path}: not fused with an image model; it scores metadata rows alone")
        run = check_same_image_run(self.image, str(self.path))
        return load_predictor(run.path, device)

    def probabilities_rows(self, table: pd.DataFrame, image_prob: np.ndarray | None = None,
                           where: str = "input") -> np.ndarray:
        table = table.reset_index(drop=True)
        if self.fused and image_prob is None:
            raise BadInputError(f"{where}: {self.path} is fused with an image model; its image scores are needed")
        stacked = self.fused and self.fusion == "stack"
        X = build_features(table, self.spec, image_prob if stacked else None, where=where)
        offset = image_logit(image_prob) if image_prob is not None and self.fusion == "offset" else None
        tab = predict_average(self.engine, self.models, X, offset)
        if self.fused and self.fusion == "late":
            assert image_prob is not None and self.reference is not None  # refused above; loaded with a late-fusion run
            return rank_average(image_prob, tab, self.reference["image"], self.reference["tabular"])
        return tab


def _model_doc(path: Path) -> dict:
    """model.json, every field the predictor uses checked (type and range) before use."""
    doc = read_json(path)
    damaged = "the run folder is damaged; train the tabular run again"
    if not isinstance(doc, dict):
        raise BadInputError(f"{path}: expected a JSON object, got a {type(doc).__name__}; {damaged}")
    missing = [k for k in ("engine", "n_folds", "threshold", "features") if k not in doc]
    if missing:
        raise BadInputError(f"{path}: no {', '.join(missing)}; {damaged}")
    n, thr = doc["n_folds"], doc["threshold"]
    problems = []
    if doc["engine"] not in ENGINES:
        problems.append(f"engine {shown(doc['engine'])} is none of {', '.join(ENGINES)}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
        problems.append(f"n_folds {shown(n)} is not a whole number of folds")
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0 <= thr <= 1:
        problems.append(f"threshold {shown(thr)} is not a probability")
    if doc.get("fusion") not in (None, *FUSIONS) or not isinstance(doc.get("image") or {}, dict):
        problems.append(f"fusion {shown(doc.get('fusion'))} / image {shown(doc.get('image'))} are not a fusion")
    if not isinstance(doc.get("files", {}), dict):
        problems.append("files is not a mapping")
    if problems:
        raise BadInputError(f"{path}: {'; '.join(problems)}; {damaged}")
    return doc


def _feature_spec(doc: dict, path: Path) -> FeatureSpec:
    try:
        spec = FeatureSpec.from_dict(doc["features"])
        if not all(isinstance(c, str) and spec.kinds[c] in ("numeric", "categorical") for c in spec.inputs):
            raise ValueError("an input column without a kind")
        return spec
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise BadInputError(f"{path}: its features are not a feature spec ({first_line(e, 100)}); the run folder is "
                            "damaged; train the tabular run again") from None


def _load_model(engine: Engine, path: Path, digest: str | None, run: Path) -> Any:
    """One fold model, checked before the engine reads it: the hash model.json recorded (runs written
    since it is recorded), and the engine's own look at the file."""
    name = f"{MODEL_DIR}/{path.name}"
    if not path.is_file():
        raise BadInputError(f"{run}: no {name}; the run folder is incomplete")
    problem = engine.check_file(path)
    if digest is not None and sha256_file(path) != digest:
        problem = "its content differs from what the run wrote (sha256 in model.json)"
    if problem:
        raise BadInputError(f"{run / name}: {problem}; the run folder is damaged; train the tabular run again")
    try:
        return engine.load(path)
    except Exception as e:  # each engine raises its own types for a file it cannot read
        raise BadInputError(f"{run / name}: {engine.name} cannot read it ({first_line(e, 150)}); the run folder is "
                            "damaged; train the tabular run again") from None


def load_tabular_predictor(run: Run, device: str = "auto") -> TabularPredictor:
    folder = run.path / MODEL_DIR
    spec_path = run.file(f"{MODEL_DIR}/{SPEC_FILE}")
    doc = _model_doc(spec_path)
    engine = get_engine(doc["engine"])
    files = doc.get("files", {})
    models = [_load_model(engine, folder / f"fold-{f}{engine.suffix}", files.get(f"fold-{f}{engine.suffix}"), run.path)
              for f in range(doc["n_folds"])]
    reference = None
    if doc.get("fusion") == "late" and doc.get("image"):
        path = run.file(f"{MODEL_DIR}/{REFERENCE_FILE}")
        try:
            with np.load(path) as ref:
                reference = {"image": ref["image"], "tabular": ref["tabular"]}
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise BadInputError(f"{path}: not readable ({first_line(e, 100)}); the run folder is damaged") from None
    return TabularPredictor(run.path, _feature_spec(doc, spec_path), engine, models, float(doc["threshold"]),
                            doc.get("fusion"), doc.get("image"), reference)


# scores rows (metadata), not images; its fold hash is the folds' (the image cv's own with --image CV_DIR)
register_kind(RunKind("tabular", takes="rows", loader=load_tabular_predictor,
                      files=(fmt.PREDICTIONS, fmt.OOF, IMPORTANCE, MODEL_DIR, fmt.FIGURES_DIR),
                      report_figures=fmt.REPORT_FIGURES, fold_hash=("folds", "hash"), group_keys=("group_rule", "group")))
