"""`lesionlab compare`: paired comparisons of two runs (on their test set, or on the out-of-fold predictions of
two cvs) and what it refuses."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import RUN_FLAGS as FLAGS  # the tiny runs' flags, one list for every file
from conftest import cli
from lesionlab.runs import read_table

SMALL = ["--epochs", "2", "--batch-size", "16", "--n-malignant", "20", "--bootstrap", "100", "--eval-batch-size", "64"]


@pytest.mark.slow
def test_compare_pairs_cvs_on_oof_and_refuses_different_folds(cv_dir, small_data, tmp_path):
    other = tmp_path / "cv_lr"
    cli("cv", "--data", small_data, "--out", other, "--folds", "3", *FLAGS, "--lr", "0.001")
    r = cli("compare", cv_dir, other, "--n-boot", "50")
    assert "out-of-fold images" in r.output and "lesion_id" in r.output
    n_pool = len(read_table(cv_dir / "oof.csv"))
    assert f"same {n_pool} out-of-fold" in r.output
    # the images of some folds only, each scored by its own fold's model on both sides
    r = cli("compare", cv_dir, other, "--n-boot", "50", "--folds", "2,0", "--json", tmp_path / "folds.json")
    assert "out-of-fold (folds 2, 0) images" in r.output
    res = json.loads((tmp_path / "folds.json").read_text())
    oof_a, oof_b = (read_table(d / "oof.csv") for d in (cv_dir, other))
    part_a, part_b = (t[t["fold"].isin([0, 2])].sort_values("id") for t in (oof_a, oof_b))
    assert res["folds"] == [2, 0] and res["n_test"] == len(part_a) < n_pool
    auc = res["metrics"]["roc_auc"]
    assert auc["a"] == pytest.approx(roc_auc_score(part_a["label"], part_a["prob"]))
    assert auc["b"] == pytest.approx(roc_auc_score(part_b["label"], part_b["prob"]))
    # fold by fold: each side's value the mean of its folds' own ROC AUCs
    r = cli("compare", cv_dir, other, "--n-boot", "50", "--per-fold", "--json", tmp_path / "per-fold.json")
    assert "the mean over folds 0, 1, 2 of its value on the fold's images" in r.output
    res = json.loads((tmp_path / "per-fold.json").read_text())
    assert res["per_fold"] == [0, 1, 2] and res["n_test"] == n_pool
    for side, table in (("a", oof_a), ("b", oof_b)):
        expect = np.mean([roc_auc_score(f["label"], f["prob"]) for _, f in table.groupby("fold")])
        assert res["metrics"]["roc_auc"][side] == pytest.approx(expect)
    # a cv of two repeats holds other images in each repeat's folds: refused by name
    rep = tmp_path / "cv_repeats"
    shutil.copytree(cv_dir, rep)
    table = read_table(rep / "oof.csv")
    table = pd.concat([table, table.assign(repeat=1, fold=(table["fold"] + 1) % 3)], ignore_index=True)
    table.to_csv(rep / "oof.csv", index=False)
    r = cli("compare", rep, rep, "--per-fold", ok=False)
    assert r.exit_code == 2 and "is a cv of 2 repeats" in r.output and "--per-fold" in r.output
    r = cli("compare", cv_dir, other, "--per-fold", "--on", "test", ok=False)
    assert r.exit_code == 2 and "--per-fold pairs out-of-fold images fold by fold; --on test" in r.output
    r = cli("compare", cv_dir, other, "--folds", "0,5", ok=False)
    assert r.exit_code == 2 and "no fold 5 (its folds: 0, 1, 2)" in r.output
    r = cli("compare", cv_dir, other, "--folds", "0", "--on", "test", ok=False)
    assert r.exit_code == 2 and "--on test" in r.output
    moved = tmp_path / "cv_seed"
    cli("cv", "--data", small_data, "--out", moved, "--folds", "3", *FLAGS, "--fold-seed", "7")
    r = cli("compare", cv_dir, moved, "--n-boot", "50", ok=False)
    assert r.exit_code == 2 and "different folds" in r.output


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


def test_a_difference_cell_marks_only_an_interval_that_excludes_zero():
    from lesionlab.workflows.compare import difference_cell

    assert difference_cell({"diff": 0.0125, "lo": 0.002, "hi": 0.031}) == "+0.013 [+0.002, +0.031] ↑"
    assert difference_cell({"diff": -0.05, "lo": -0.0791, "hi": -0.021}, 4) == "-0.0500 [-0.0791, -0.0210] ↓"
    assert difference_cell({"diff": 0.01, "lo": -0.004, "hi": 0.024}) == "+0.010 [-0.004, +0.024]"
    assert difference_cell({"diff": 0.01, "lo": 0.0, "hi": 0.02}) == "+0.010 [+0.000, +0.020]"  # touching zero: no mark
