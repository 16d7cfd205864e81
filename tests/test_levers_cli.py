"""The levers from the command line, on real images, and the honest-comparison tools."""
import json

import pandas as pd
import pytest
import yaml

from conftest import cli

SMALL = ["--epochs", "2", "--batch-size", "16", "--n-malignant", "20", "--bootstrap", "100", "--eval-batch-size", "64"]


@pytest.mark.slow
def test_every_lever_in_one_run(small_data, tmp_path):
    run = tmp_path / "r"
    cli("train", "--data", small_data, "--out", run, *SMALL, "--epochs", "3", "--augment", "medium",
        "--sampler", "redraw", "--pos-weight", "auto", "--optimizer", "adamw", "--weight-decay", "0.01",
        "--scheduler", "cosine", "--warmup-epochs", "0.5", "--ema", "--early-stop", "pauc_80", "--patience", "2",
        "--label-smoothing", "0.05", "--threshold", "sens:0.9", "--prevalence", "50:1000", "--model", "upgraded_cnn")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["augment"], cfg["sampler"], cfg["pos_weight"], cfg["ema"], cfg["early_stop"]) == \
        ("medium", "redraw", "auto", 0.999, "val_pauc_80")
    info = json.loads((run / "run.json").read_text())
    assert info["levers"]["pos_weight"] == pytest.approx(2.0)  # benign / malignant of the 1:2 draw
    assert info["monitor"] == "val_pauc_80" and info["threshold_rule"] == "sens:0.9"
    # trained at 1/3 malignant with pos_weight 2 -> calibrated to 1/2; shifted to 50/1050
    assert info["prevalence"]["trained_at"] == pytest.approx(0.5)
    assert info["prevalence"]["deployment"] == pytest.approx(50 / 1050)
    preds = pd.read_csv(run / "predictions.csv")
    assert {"prob", "prob_model"} <= set(preds.columns)
    assert (preds["prob"] <= preds["prob_model"] + 1e-9).all()  # a lower prevalence lowers every probability
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["test"]["precision_at_prevalence"] <= 1 and "precision_at_prevalence" in m["test"]["ci95"]
    assert m["val"]["recall"] >= 0.9  # the threshold met the target sensitivity on validation
    history = pd.read_csv(run / "history.csv")
    assert history["lr"].iloc[-1] < 1e-4  # cosine decay
    # predict applies the same prior shift and threshold to new images
    manifest = json.loads((small_data / "store.json").read_text())["source"]["location"]
    cli("predict", run, manifest, "--out", tmp_path / "p.csv")
    scored = pd.read_csv(tmp_path / "p.csv").merge(preds, on="id")
    assert len(scored) == 100 and (scored["prob_x"] - scored["prob_y"]).abs().max() < 1e-4
    assert ((scored["prob_x"] >= m["test"]["threshold"]).astype(int) == scored["decision"]).all()


def test_focal_loss_balanced_sampler_and_mixup(small_data, tmp_path):
    cli("train", "--data", small_data, "--out", tmp_path / "r", *SMALL, "--loss", "focal", "--focal-gamma", "1.5",
        "--sampler", "balanced", "--ratio", "natural", "--augment", "heavy", "--mixup", "0.4")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["levers"]["sampler"] == "balanced" and info["draw"]["benign"] > info["draw"]["malignant"]
    assert info["levers"]["mixup"] == 0.4
    history = pd.read_csv(tmp_path / "r" / "history.csv")
    assert history["train_loss"].notna().all() and history["train_roc_auc"].between(0, 1).all()


@pytest.mark.slow
def test_timm_backbone_trains(small_data, tmp_path):
    cli("train", "--data", small_data, "--out", tmp_path / "r", *SMALL, "--epochs", "1", "--model", "resnet18")
    assert (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--augment", "extreme"], "'extreme' is not one of 'none', 'light', 'medium', 'heavy'"),
    (["--sampler", "oversample"], "is not one of 'none', 'redraw', 'balanced'"),
    (["--focal-gamma", "-1"], "--focal-gamma: expected a number >= 0, got -1.0"),  # a flag is named as a flag
    (["--pos-weight", "0"], "--pos-weight must be > 0"),
    (["--pos-weight", "-2"], "--pos-weight must be > 0"),
    (["--threshold", "sens:1.0"], "target sensitivity must lie in (0, 1)"),
    (["--early-stop", "accuracy"], "--early-stop must be one of pauc_80"),
    (["--pretrained"], "'simple_cnn' has no pretrained weights"),
    (["--loss", "focal", "--pos-weight", "2"], "focal loss weights the classes with --focal-alpha"),
])
def test_bad_lever_values(small_data, tmp_path, args, message):
    r = cli("train", "--data", small_data, "--out", tmp_path / "r", "--epochs", "1", *args, ok=False)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_seeds_compare_and_baseline_report(small_data, tmp_path):
    runs = tmp_path / "runs"
    cli("train", "--data", small_data, "--out", runs / "base", *SMALL, "--seeds", "0,1")
    cli("train", "--data", small_data, "--out", runs / "aug", *SMALL, "--seeds", "0,1", "--augment", "light")
    assert (runs / "base" / "seed-1" / "metrics.json").exists()
    again = cli("train", "--data", small_data, "--out", runs / "base", *SMALL, "--seeds", "0,1")
    assert "complete, skipped" in again.output
    r = cli("compare", runs / "base", runs / "aug", "--n-boot", "200", "--json", tmp_path / "c.json")
    lines = r.output.splitlines()
    assert any(ln.startswith("average_precision") for ln in lines) and any(ln.startswith("pauc_80") for ln in lines)
    res = json.loads((tmp_path / "c.json").read_text())
    for m in ("roc_auc", "average_precision", "pauc_80", "f1"):
        d = res["metrics"][m]
        assert d["lo"] <= d["diff"] <= d["hi"]
        expected = ("includes zero" if d["lo"] <= 0 <= d["hi"] else "above zero" if d["lo"] > 0 else "below zero")
        assert any(ln.startswith(m) and expected in ln for ln in lines)
    cli("report", runs, "--out", tmp_path / "rep", "--baseline", "base", "--n-boot", "100")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Paired comparison against base" in md and "| aug | 2 |" in md
    bad = cli("report", runs, "--out", tmp_path / "rep2", "--baseline", "bas", ok=False)
    assert "did you mean 'base'" in bad.output


@pytest.mark.slow
def test_compare_refuses_different_test_sets(small_data, tmp_path, sample_manifest):
    from conftest import cli, copy_subset, subset

    cli("train", "--data", small_data, "--out", tmp_path / "a", *SMALL, "--epochs", "1")
    other = tmp_path / "other"
    copy_subset(subset(sample_manifest, 60, 200, seed=7), other / "raw")
    cli("prepare", other / "raw", "--out", other / "data", "--size", "32")
    cli("split", other / "data", "--val", "10:40", "--test", "10:40")
    cli("train", "--data", other / "data", "--out", tmp_path / "b", *SMALL, "--epochs", "1")
    r = cli("compare", tmp_path / "a", tmp_path / "b", ok=False)
    assert r.exit_code == 2 and "same test set" in r.output


def test_augment_preview(small_data, tmp_path):
    cli("augment-preview", small_data, "--policy", "heavy", "--out", tmp_path / "g.png", "--rows", "4", "--columns", "3")
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size == (3 * 34 + 2, 4 * 34 + 2)
    assert cli("augment-preview", small_data, "--out", tmp_path / "g.png", ok=False).exit_code == 2
