"""End to end through the command line, from raw images to report and predictions."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import cli, copy_subset, subset
from isic2024_fixture import write_isic2024
from lesionlab.metrics import compute_metrics

TRAIN_FLAGS = ["--epochs", "2", "--batch-size", "16", "--n-malignant", "20", "--bootstrap", "100", "--eval-batch-size", "64"]



@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, sample_manifest):
    """raw images -> prepare -> split -> train -> report, once for the module."""
    root = tmp_path_factory.mktemp("e2e")
    manifest = copy_subset(subset(sample_manifest, 60, 200, seed=1), root / "raw")
    data, run, report = root / "data", root / "runs" / "a", root / "report"
    r_prep = cli("prepare", manifest.parent, "--out", data, "--size", "32")
    r_split = cli("split", data, "--val", "10:40", "--test", "10:40", "--seed", "1")
    r_train = cli("train", "--data", data, "--out", run, "--ratio", "1:2", "--threshold", "val-f1", "--measure-compute",
                  *TRAIN_FLAGS)
    r_report = cli("report", root / "runs", "--out", report)
    return {"root": root, "manifest": manifest, "data": data, "run": run, "report": report,
            "out": {"prepare": r_prep.output, "split": r_split.output, "train": r_train.output, "report": r_report.output}}


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


def test_report(pipeline):
    md = (pipeline["report"] / "report.md").read_text()
    html = (pipeline["report"] / "report.html").read_text()
    assert "## Summary" in md and "Test Loss:" in md and "![training curves]" in md
    assert html.count("data:image/png;base64,") >= 4 and "<table>" in html
    assert "src='figures/" not in html  # self-contained
    for img in (pipeline["report"] / "figures").iterdir():
        assert img.stat().st_size > 1000


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


# ---------------------------------------------------------------- predict


def test_predict_folder_file_and_manifest(pipeline, tmp_path):
    run, raw = pipeline["run"], pipeline["manifest"].parent
    threshold = json.loads((run / "metrics.json").read_text())["test"]["threshold"]
    cli("predict", run, raw / "images", "--out", tmp_path / "folder.csv")
    df = pd.read_csv(tmp_path / "folder.csv")
    assert list(df.columns) == ["id", "prob", "decision"] and len(df) == 260
    assert ((df["prob"] >= threshold).astype(int) == df["decision"]).all()
    # the same images through the manifest give the same probabilities, with labels
    cli("predict", run, pipeline["manifest"], "--out", tmp_path / "manifest.csv")
    dm = pd.read_csv(tmp_path / "manifest.csv")
    assert "label" in dm.columns
    merged = df.merge(dm, on="id")
    assert np.allclose(merged["prob_x"], merged["prob_y"])
    # ... and as in the run's own predictions (same preprocessing as training)
    own = pd.read_csv(run / "predictions.csv").merge(dm, on="id")
    assert np.allclose(own["prob_x"], own["prob_y"], atol=1e-5)
    one = sorted((raw / "images").iterdir())[0]
    cli("predict", run, one, "--out", tmp_path / "one.csv")
    assert pd.read_csv(tmp_path / "one.csv")["id"].tolist() == [one.stem]


def test_predict_any_size_and_isic2024_pair(pipeline, tmp_path):
    write_isic2024(tmp_path / "isic", n=30, prefix="test", labels=False, size_range=(90, 250))
    cli("predict", pipeline["run"], tmp_path / "isic" / "test-metadata.csv", "--out", tmp_path / "p.csv", "--workers", "2")
    df = pd.read_csv(tmp_path / "p.csv")
    meta = pd.read_csv(tmp_path / "isic" / "test-metadata.csv")
    assert df["id"].tolist() == meta["isic_id"].tolist() and df["prob"].between(0, 1).all()


def test_predict_bad_images_and_existing_output(pipeline, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(pipeline["manifest"].parent / "images", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    r = cli("predict", pipeline["run"], folder, "--out", tmp_path / "p.csv", ok=False)
    assert r.exit_code == 2 and "broken" in r.output and not (tmp_path / "p.csv").exists()
    r = cli("predict", pipeline["run"], folder, "--out", tmp_path / "p.csv", "--skip-bad")
    assert "1 unreadable skipped" in r.output and len(pd.read_csv(tmp_path / "p.csv")) == 260
    r = cli("predict", pipeline["run"], folder, "--out", tmp_path / "p.csv", "--skip-bad", ok=False)
    assert "exists" in r.output


# ---------------------------------------------------------------- sweep


def test_sweep_runs_skips_and_resumes(pipeline, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "out": str(tmp_path / "runs"),
        "base": {"epochs": 1, "n_malignant": 15, "batch_size": 16, "bootstrap": 50},
        "experiments": [{"name": "a 1:1", "ratio": "1:1"}, {"name": "a 1:2", "ratio": "1:2"}],
        "grid": {"seed": [0, 1]},
    }))
    r = cli("sweep", sweep, "--data", pipeline["data"])
    assert "4 run(s) done, 0 already complete" in r.output
    shutil.rmtree(tmp_path / "runs" / "a_1to2" / "seed-1")  # as if interrupted
    r = cli("sweep", sweep, "--data", pipeline["data"])
    assert "1 run(s) done, 3 already complete" in r.output
    cli("report", tmp_path / "runs", "--out", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| a 1:1 | simple\\_cnn | 15:15 | 2 |" in md and " ± " in md  # names are Markdown-escaped


def test_sweep_refuses_a_changed_config(pipeline, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    spec = {"out": str(tmp_path / "runs"), "base": {"epochs": 1, "n_malignant": 10, "bootstrap": 20},
            "experiments": [{"name": "x", "ratio": "1:1"}]}
    sweep.write_text(yaml.safe_dump(spec))
    cli("sweep", sweep, "--data", pipeline["data"])
    spec["base"]["lr"] = 0.01
    sweep.write_text(yaml.safe_dump(spec))
    r = cli("sweep", sweep, "--data", pipeline["data"], ok=False)
    assert "another config" in r.output


def test_report_never_writes_over_a_users_folder(pipeline, tmp_path):
    (tmp_path / "mine" / "figures").mkdir(parents=True)
    (tmp_path / "mine" / "figures" / "plot.png").write_bytes(b"mine")
    r = cli("report", pipeline["root"] / "runs", "--out", tmp_path / "mine", ok=False)
    assert r.exit_code == 2 and "did not write" in r.output
    assert (tmp_path / "mine" / "figures" / "plot.png").read_bytes() == b"mine"
    cli("report", pipeline["root"] / "runs", "--out", pipeline["report"])  # its own folder: rebuilt


# ---------------------------------------------------------------- hostile and careless input


def test_predict_refuses_decompression_bombs_by_name(pipeline, tmp_path):
    from test_images import png_claiming

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((pipeline["manifest"].parent / "images").iterdir())[:3]:
        shutil.copyfile(p, folder / p.name)
    (folder / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    r = cli("predict", pipeline["run"], folder, "--out", tmp_path / "p.csv", ok=False)
    assert r.exit_code == 2 and "bomb (100000x100000 = 10,000,000,000 pixels is over the limit" in r.output, r.output
    r = cli("predict", pipeline["run"], folder, "--out", tmp_path / "p.csv", "--skip-bad")
    assert "3 image(s) scored" in r.output and "1 unreadable skipped" in r.output
    r = cli("predict", pipeline["run"], folder, "--out", tmp_path / "q.csv", "--max-pixels", "29999", ok=False)
    assert "200x150 = 30,000 pixels is over the limit of 29,999" in r.output


HOSTILE_IDS = ["=cmd|' /C calc'!A0", "-5", "@SUM(1)", "+1", "'quote"]


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


def test_report_escapes_names_and_paths(pipeline, tmp_path):
    hostile = "<script>alert(1)</script> | *bold* _it_ [link](http://x) `tick` ![img](y)"
    run = tmp_path / "runs" / "run `x` [y]"
    shutil.copytree(pipeline["run"], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.update(name=hostile, model="cnn|evil")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    cli("report", tmp_path / "runs", "--out", tmp_path / "rep", "--title", "# T <b>")
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    for text in (md, html):  # no markup of the user's survives, in either
        assert "<script>" not in text and "<b>" not in text
    assert "[link](" not in md and "`tick`" not in md and " *bold* " not in md and " _it_ " not in md
    assert "# \\# T \\<b\\>" in md
    assert "## \\<script\\>alert(1)\\</script\\> \\| \\*bold\\* \\_it\\_ \\[link\\](http://x) \\`tick\\` \\!\\[img\\](y)" in md
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| experiment |"))
    row = next(line for line in lines if line.startswith("| \\<script"))
    assert row.replace("\\|", "").count("|") == header.count("|")  # the name's | does not add a column
    import re

    assert re.search(r"### seed 0 \(``[^`]*/run `x` \[y\]``\)", md)  # the path as code, fenced past its backticks
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


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


def test_explain_reads_every_layout_that_predict_reads():
    from lesionlab.choices import FORMATS
    from lesionlab.cli import main

    fmt = next(p for p in main.commands["explain"].params if p.name == "fmt")
    assert tuple(fmt.type.choices) == FORMATS
