"""An image model's scores as features: out-of-fold probabilities for the training images, the
fold ensemble's probabilities for validation, test and new images.

The image run is a cv run folder (or an ensemble folder of the same shape):
    oof.csv          id, group, fold, repeat, label, prob  (every train-pool image, out of fold)
    predictions.csv  id, split, label, prob                 (val and test, the fold ensemble)
    run.json         {"format": {"kind": "cv"}, "split_sha256": ..., "fold_sha256": ...}
A training image's feature is only ever its out-of-fold score: an in-sample score (from a
model that saw the image) would tell the tabular model the label.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.splits import Split
from ..errors import BadInputError, LeakError, preview
from ..runs import Run, load_run
from ..runs import format as fmt

IMAGE_KINDS = ("cv", "ensemble")


@dataclass
class ImageScores:
    run: Run
    oof: pd.Series         # id -> out-of-fold probability (mean over repeats)
    folds: pd.Series       # id -> fold of the first repeat
    evaluation: pd.Series  # id -> fold-ensemble probability (val and test)
    repeats: int

    @property
    def n_folds(self) -> int:
        return int(self.folds.max()) + 1

    def record(self) -> dict:
        """What a run keeps to recognise this image model later (predict checks it)."""
        return {"path": str(self.run.path.resolve()), "kind": self.run.kind,
                "split_sha256": self.run.info.get("split_sha256"), "folds_hash": self.run.fold_sha256,
                "n_folds": self.n_folds, "repeats": self.repeats}


def open_image_run(path: str | Path) -> Run:
    run = load_run(path, IMAGE_KINDS)
    if not (run.path / fmt.OOF).exists():
        raise BadInputError(f"{path}: no {fmt.OOF}; --image needs a cross-validated image model (`lesionlab cv`) "
                            "with out-of-fold scores for every training image")
    return run


def load_image_scores(path: str | Path, split: Split, ids: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                      groups: np.ndarray) -> ImageScores:
    """Read and check an image run against this data set's split: the same split file, every
    train-pool image scored out of fold, whole groups in one fold, val and test scored."""
    run = open_image_run(path)
    if run.info.get("split_sha256") != split.sha256:
        raise LeakError(f"{path}: the image model was trained on another split (split hash "
                        f"{str(run.info.get('split_sha256'))[:12]}, this data set's {split.path.name} is "
                        f"{split.sha256[:12]}); its scores of val/test images may be in-sample. Cross-validate the "
                        "image model on this split")
    oof = run.oof()
    need = [c for c in ("id", "fold", "prob") if c not in oof.columns]
    if need:
        raise BadInputError(f"{run.path / fmt.OOF}: missing column(s) {', '.join(need)}")
    if "repeat" not in oof.columns:
        oof["repeat"] = 0
    train_ids = pd.Index(ids["train"].astype(str))
    extra = sorted(set(oof["id"]) - set(train_ids))
    if extra:
        raise LeakError(f"{run.path / fmt.OOF}: {len(extra)} scored image(s) are not in this split's train pool "
                        f"({preview(extra)}): an image model trained on another split or data set")
    missing = train_ids.difference(pd.Index(oof["id"].unique()))
    if len(missing):
        raise BadInputError(f"{run.path / fmt.OOF}: {len(missing)} train-pool image(s) have no out-of-fold score "
                            f"({preview(list(missing))}): an image model trained on another split or data set")
    first = oof[oof["repeat"] == oof["repeat"].min()]
    if first["id"].duplicated().any():
        raise BadInputError(f"{run.path / fmt.OOF}: an id appears twice within one repeat")
    folds = first.set_index("id")["fold"].astype(np.int64).reindex(train_ids)
    if "label" in oof.columns:
        lab = first.set_index("id")["label"].astype(np.int64).reindex(train_ids).to_numpy()
        wrong = np.flatnonzero(lab != labels["train"])
        if len(wrong):
            raise BadInputError(f"{run.path / fmt.OOF}: labels differ from this data set's for "
                                f"{preview(train_ids[wrong].tolist())}: another data set")
    spread = pd.Series(folds.to_numpy()).groupby(groups).nunique()
    split_groups = spread[spread > 1].index.tolist()
    if split_groups:
        raise LeakError(f"{run.path / fmt.OOF}: another fold assignment: {len(split_groups)} group(s) of this "
                        f"split fall in several folds ({preview(split_groups)}); folds must keep a group whole")
    prob = oof.groupby("id")["prob"].mean().reindex(train_ids)
    preds = run.predictions()
    evaluation = preds.drop_duplicates("id").set_index("id")["prob"]
    for side in ("val", "test"):
        absent = pd.Index(ids[side].astype(str)).difference(evaluation.index)
        if len(absent):
            raise BadInputError(f"{run.path / 'predictions.csv'}: {len(absent)} {side} image(s) have no score "
                                f"({preview(list(absent))}): an image model evaluated on another split")
    return ImageScores(run, prob, folds, evaluation, int(oof["repeat"].nunique()))


def check_same_image_run(record: dict, where: str) -> Run:
    """At predict time: the image run a fused run was trained with, unchanged."""
    path = record["path"]
    try:
        run = open_image_run(path)
    except BadInputError as e:
        raise BadInputError(f"{where}: the run is fused with the image model at {path}, which cannot be read: {e}") from None
    if run.info.get("split_sha256") != record.get("split_sha256") or run.fold_sha256 != record.get("folds_hash"):
        raise LeakError(f"{where}: the image model at {path} is no longer the one this run was trained with "
                        "(another split or another fold assignment); train the tabular run again")
    return run
