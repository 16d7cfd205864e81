"""End to end through the command line, from raw images to report and predictions."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import cli, copy_subset, subset
from lesionlab.metrics import compute_metrics

TRAIN_FLAGS = ["--epochs", "2", "--batch-size", "16", "--n-malignant", "20", "--bootstrap", "100", "--eval-batch-size", "64"]


HOSTILE_IDS = ["=cmd|' /C calc'!A0", "-5", "@SUM(1)", "+1", "'quote"]


def test_prepare_and_split_output(pipeline):
    assert "260 images at 32x32 (60 malignant, 200 benign)" in pipeline["out"]["prepare"]
    assert "grouped by lesion_id" in pipeline["out"]["split"]
    assert "val 10 malignant / 40 benign" in pipeline["out"]["split"]
    again = cli("prepare", pipeline["manifest"].parent, "--out", pipeline["data"], "--size", "32")
    assert "reused" in again.output


def test_run_folder_contents(pipeline):
    run = pipeline["run"]
    for f in ("config.yaml", "run.json", "history.csv", "metrics.json", "predictions.csv", "checkpoint.pt",
              "train_draw.csv", "figures/confusion_test.png", "figures/training_curves.png", "figures/roc.png",
              "figures/pr.png"):
        assert (run / f).exists(), f
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["ratio"] == "1:2" and cfg["epochs"] == 2 and cfg["threshold"] == "val-f1"
    info = json.loads((run / "run.json").read_text())
    split_bytes = (pipeline["data"] / "split.json").read_bytes()
    import hashlib

    assert info["split_sha256"] == hashlib.sha256(split_bytes).hexdigest()
    assert info["draw"] == {"malignant": 20, "benign": 40, "synthetic": 0, "extra": 0, "pool_malignant": 40,
                            "pool_benign": info["draw"]["pool_benign"]}
    assert info["format"] == {"version": 1, "kind": "train"}
    assert info["speed"]["train_img_s"] > 0 and info["speed"]["compute_img_s"] > 0  # asked for by --measure-compute
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [1, 2] and {"train_loss", "val_loss", "val_pauc_80"} <= set(history.columns)


def test_metrics_recomputed_from_predictions(pipeline):
    run = pipeline["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    preds = pd.read_csv(run / "predictions.csv")
    assert list(preds.columns) == ["id", "split", "label", "prob", "group"]  # group: for grouped intervals
    assert (preds["split"] == "val").sum() == 50 and (preds["split"] == "test").sum() == 50
    keys = {"loss", "accuracy", "precision", "recall", "f1", "specificity", "balanced_accuracy", "roc_auc",
            "average_precision", "pauc_80", "threshold"}
    for side in ("val", "test"):
        assert keys <= set(metrics[side])
        p = preds[preds["split"] == side]
        again = compute_metrics(p["label"].to_numpy(), p["prob"].to_numpy(), metrics[side]["threshold"])
        for k in keys - {"loss"}:
            assert again[k] == pytest.approx(metrics[side][k], abs=1e-4), k
    ci = metrics["test"]["ci95"]
    for k in keys - {"threshold"}:
        assert ci[k][0] <= metrics["test"][k] + 1e-9 and metrics["test"][k] <= ci[k][1] + 1e-9, k
    # the threshold was chosen on validation: it is the max-F1 point there
    val = preds[preds["split"] == "val"]
    best = max(compute_metrics(val["label"], val["prob"], t)["f1"] for t in np.unique(val["prob"]))
    assert metrics["val"]["f1"] == pytest.approx(best)


def test_train_prints_notebook_lines(pipeline):
    out = pipeline["out"]["train"]
    val_line = [ln for ln in out.splitlines() if ln.startswith("Val Loss: ")]
    test_line = [ln for ln in out.splitlines() if ln.startswith("Test Loss: ")]
    assert len(val_line) == 1 and len(test_line) == 1
    import re

    assert re.fullmatch(r"Test Loss: \d\.\d{4} \| Acc: \d+\.\d{2}% \| Precision: \d\.\d{3} \| Recall: \d\.\d{3} \| F1: \d\.\d{3}",
                        test_line[0])


def test_run_folder_never_overwritten(pipeline):
    before = (pipeline["run"] / "metrics.json").read_bytes()
    r = cli("train", "--data", pipeline["data"], "--out", pipeline["run"], *TRAIN_FLAGS, ok=False)
    assert r.exit_code == 2 and "already holds a run" in r.output
    assert (pipeline["run"] / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("args,message", [
    (["--ratio", "1:50", "--n-malignant", "20"], "needs 1000 benign images; the train pool has only"),
    (["--n-malignant", "500"], "the train pool has only"),
    (["--threshold", "sens:1.5"], "target sensitivity must lie in (0, 1)"),
    (["--model", "resnet"], "unknown model 'resnet'"),
])
def test_bad_training_input(pipeline, tmp_path, args, message):
    r = cli("train", "--data", pipeline["data"], "--out", tmp_path / "r", "--epochs", "1", *args, ok=False)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.partial*"))


def test_unknown_config_key_names_the_closest(pipeline, tmp_path):
    (tmp_path / "c.yaml").write_text("model: simple_cnn\nepoch: 3\n")
    r = cli("train", tmp_path / "c.yaml", "--data", pipeline["data"], "--out", tmp_path / "r", ok=False)
    assert "unknown config key 'epoch' (did you mean 'epochs'?)" in r.output


def test_config_file_with_flag_override(pipeline, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": "upgraded_cnn", "ratio": "1:1", "epochs": 5,
                                                      "n_malignant": 20, "bootstrap": 50, "batch_size": 16}))
    cli("train", tmp_path / "c.yaml", "--data", pipeline["data"], "--out", tmp_path / "r", "--epochs", "1")
    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert cfg["model"] == "upgraded_cnn" and cfg["epochs"] == 1 and cfg["ratio"] == "1:1"


def test_same_seed_same_run(pipeline, tmp_path):
    cli("train", "--data", pipeline["data"], "--out", tmp_path / "again", "--ratio", "1:2", "--threshold", "val-f1",
        *TRAIN_FLAGS)
    a = pd.read_csv(pipeline["run"] / "predictions.csv")
    b = pd.read_csv(tmp_path / "again" / "predictions.csv")
    assert np.allclose(a["prob"], b["prob"], atol=1e-5)


# ---------------------------------------------------------------- hostile and careless input


def test_ids_that_look_like_formulas_are_neutralised_and_read_back(tmp_path, sample_manifest):
    """Ids a spreadsheet would run (=, +, -, @) are written with a leading quote in every CSV;
    lesionlab reads its own CSVs back to the same ids (runs compare, splits match)."""
    from lesionlab.data.store import Store
    from lesionlab.fileio import csv_restore
    from lesionlab.runs import Run

    df = subset(sample_manifest, 30, 60, seed=2)
    df.insert(0, "id", [HOSTILE_IDS[i] if i < len(HOSTILE_IDS) else f"{HOSTILE_IDS[i % 4]}{i}" for i in range(len(df))])
    manifest = copy_subset(df, tmp_path / "raw")
    data, run = tmp_path / "data", tmp_path / "run"
    cli("prepare", manifest, "--out", data, "--size", "32")
    cli("split", data, "--val", "8:20", "--test", "8:20", "--group", "none")
    cli("train", "--data", data, "--out", run, "--epochs", "1", "--batch-size", "16", "--n-malignant", "10",
        "--bootstrap", "0", "--eval-batch-size", "64")
    cli("predict", run, manifest, "--out", tmp_path / "p.csv")
    store = Store.open(data)
    assert sorted(store.table["id"]) == sorted(df["id"])  # rows.csv read back
    split = json.loads((data / "split.json").read_text())["assign"]
    preds = Run.load(run).predictions()
    assert sorted(preds["id"]) == sorted(split["val"] + split["test"])
    assert set(csv_restore(pd.read_csv(run / "train_draw.csv", dtype=str))["id"]) <= set(df["id"])
    for csv in (data / "rows.csv", run / "predictions.csv", run / "train_draw.csv", tmp_path / "p.csv"):
        cells = [c for line in csv.read_text().splitlines() for c in line.split(",")]
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")], csv  # none a formula
    predicted = pd.read_csv(tmp_path / "p.csv", dtype={"id": str})
    assert "'=cmd|' /C calc'!A0" in set(predicted["id"]) and "'quote" in set(predicted["id"])
    assert "paired bootstrap" in cli("compare", run, run, "--n-boot", "20").output  # ids match across runs


def test_split_without_a_class_in_val_or_test_is_refused(pipeline, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pipeline["data"], data)
    for val, test in (("0:0", "0:0"), ("5:0", "5:20"), ("5:20", "0:20")):
        r = cli("split", data, "--val", val, "--test", test, "--name", "x", ok=False)
        assert r.exit_code == 2 and "expected at least 1 of each" in r.output, r.output
        assert not (data / "split-x.json").exists()
    # a saved split (by hand or by an older lesionlab) without malignant validation images: refused
    # before training, not after it
    doc = json.loads((data / "split.json").read_text())
    labels = dict(zip(*[pd.read_csv(data / "rows.csv", dtype=str)[c] for c in ("id", "label")]))
    malignant = [i for i in doc["assign"]["val"] if labels[i] == "1"]
    doc["assign"]["val"] = [i for i in doc["assign"]["val"] if i not in malignant]
    doc["assign"]["excluded"] += malignant
    (data / "split.json").write_text(json.dumps(doc))
    r = cli("train", "--data", data, "--out", tmp_path / "r", *TRAIN_FLAGS, ok=False)
    assert r.exit_code == 2 and "split.json: the validation set has 0 malignant and 40 benign image(s)" in r.output
    assert "epoch" not in r.output and not (tmp_path / "r").exists()


@pytest.mark.parametrize("config,flags,message", [
    ({}, ["--n-malignant", "lots"], "--n-malignant: expected an integer or 'all', got 'lots'"),
    ({"epochs": True}, [], "config key 'epochs': expected an integer >= 1, got true"),
    ({"lr": True}, [], "config key 'lr': expected a number > 0, got true"),
    ({"n_malignant": False}, [], "config key 'n_malignant': expected an integer or 'all', got false"),
    ({"optimizer": "adma"}, [], "config key 'optimizer': expected one of adam, adamw, sgd, got 'adma' (did you mean 'adam'?)"),
    ({"synthetic": {"data": "x", "n": "many"}}, [], "config key 'synthetic.n': expected an integer >= 1 (or nothing), got 'many'"),
    ({"epochs": 2}, ["--label-smoothing", "0.7"], "--label-smoothing: expected a number >= 0 and < 0.5, got 0.7"),
])
def test_config_errors_name_the_key_expected_and_got(pipeline, tmp_path, config, flags, message):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    r = cli("train", tmp_path / "c.yaml", "--data", pipeline["data"], "--out", tmp_path / "r", *flags, ok=False)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "r").exists()


def test_numbers_as_text_still_read_as_numbers():
    from lesionlab.config import build_config

    cfg = build_config({"epochs": "3", "lr": "1e-3", "n_malignant": "all", "ema": True}, "flags")
    assert (cfg.epochs, cfg.lr, cfg.n_malignant, cfg.ema) == (3, 0.001, "all", 0.999)
