"""Test data for the tabular model: a small ISIC 2024 store whose metadata carries some signal,
ISIC 2024 "test" pairs cut from it, and hand-written cv run folders of the layout the
cross-validation command writes (oof.csv, predictions.csv, run.json), with a model inside that
load_predictor can score images with."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from isic2024_fixture import write_isic2024

LABEL_DERIVED_2024 = ["target", "lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5",
                      "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence"]


def isic_raw(root: Path, n: int = 300, patients: int = 24, positives: int = 50, seed: int = 0) -> Path:
    """An ISIC 2024 pair of tiny crops; malignant rows get larger lesions and more colour variation
    (the stand-in's values are random otherwise), so the metadata carries some signal."""
    raw = write_isic2024(root, n=n, n_patients=patients, n_positive=positives, seed=seed, size_range=(20, 28))
    meta = pd.read_csv(raw / "train-metadata.csv", dtype=str, keep_default_na=False)
    t = meta["target"].astype(int).to_numpy()
    rng = np.random.default_rng(seed)
    for col, shift in (("clin_size_long_diam_mm", 3.0), ("tbp_lv_norm_color", 4.0)):
        values = pd.to_numeric(meta[col]) + shift * t + rng.normal(0, 2.0, len(t))
        meta[col] = values.round(4).astype(str)
    meta.to_csv(raw / "train-metadata.csv", index=False)
    return raw


def make_test_pair(raw: Path, ids: list[str], out: Path, drop: tuple[str, ...] = ()) -> Path:
    """An ISIC 2024 test pair (test-metadata.csv without label columns, test-image.hdf5) of `ids`."""
    out.mkdir(parents=True, exist_ok=True)
    meta = pd.read_csv(raw / "train-metadata.csv", dtype=str, keep_default_na=False)
    keep = meta[meta["isic_id"].isin(set(ids))].drop(columns=LABEL_DERIVED_2024 + list(drop))
    keep.to_csv(out / "test-metadata.csv", index=False)
    shutil.copyfile(raw / "train-image.hdf5", out / "test-image.hdf5")
    return out


def write_cv_dir(data: Path, out: Path, model_run: Path | None, k: int = 3, seed: int = 0,
                 oof_prob: np.ndarray | None = None, eval_prob: dict | None = None,
                 split_sha256: str | None = None, folds: np.ndarray | None = None) -> dict:
    """A cv run folder of the agreed layout. Scores come from `model_run`'s network (a train run,
    copied to out/model so a test loader can score images with it) unless given."""
    from lesionlab.data.folds import folds_hash
    from lesionlab.data.splits import load_split
    from lesionlab.data.store import Store
    from lesionlab.runs import load_predictor
    from lesionlab.tabular.model import grouped_folds

    store = Store.open(data)
    split = load_split(store)
    table = store.table
    pos = {side: split.positions(table, side) for side in ("train", "val", "test")}
    labels = table["label"].to_numpy()
    keys = split.group_keys(table)
    if model_run is not None:
        probs = load_predictor(model_run, device="cpu").probabilities(store.pixels(np.arange(len(table))))
    else:
        probs = np.random.default_rng(seed).uniform(size=len(table))
    train = pos["train"]
    if folds is None:
        folds = grouped_folds(labels[train], keys[train], k, seed)
    out.mkdir(parents=True)
    oof = pd.DataFrame({"id": table["id"].to_numpy()[train], "group": keys[train], "fold": folds, "repeat": 0,
                        "label": labels[train], "prob": probs[train] if oof_prob is None else oof_prob})
    oof.to_csv(out / "oof.csv", index=False)
    preds = pd.concat([pd.DataFrame({"id": table["id"].to_numpy()[pos[s]], "split": s, "label": labels[pos[s]],
                                     "prob": probs[pos[s]] if eval_prob is None else eval_prob[s]})
                       for s in ("val", "test")])
    preds.to_csv(out / "predictions.csv", index=False)
    # run.json as `lesionlab cv` writes it
    info = {"format": {"version": 1, "kind": "cv"}, "name": out.name, "split_sha256": split_sha256 or split.sha256,
            "folds": int(folds.max()) + 1, "fold_sha256": folds_hash(oof["id"], folds)}
    if model_run is not None:  # the cv command's predictor scores with its members: here, one network
        info.update({"members": [{"relpath": "model"}], "mean": "prob", "threshold": 0.5})
    (out / "run.json").write_text(json.dumps(info))
    (out / "config.yaml").write_text(yaml.safe_dump({"data": str(data), "folds": int(folds.max()) + 1}))
    (out / "metrics.json").write_text(json.dumps({"val": {}, "test": {}}))
    if model_run is not None:
        shutil.copytree(model_run, out / "model")
    return {"oof": oof, "predictions": preds, "info": info}


