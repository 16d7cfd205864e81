import csv
import shutil

import pytest
from sklearn.metrics import roc_auc_score

from lesionlab.benchmarking.arms import curve_table, fused_arm
from lesionlab.runs import Run
from lesionlab.workflows.compare import compare_runs


def _history(fold_dir):
    with open(fold_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip("|").split("|")]


def test_curve_table_averages_the_folds_histories_per_epoch(cv_dir, tmp_path):
    cv = tmp_path / "cv"
    shutil.copytree(cv_dir, cv)
    folds = sorted(p.parent for p in (cv / "folds").glob("*/run.json"))
    # fold 0 trained one epoch longer than the others (as early stopping leaves folds): epoch 2 is its alone
    rows = _history(folds[0])
    extra = {**rows[-1], "epoch": "2", "val_roc_auc": "0.9", "val_pauc_80": "0.15", "train_roc_auc": "0.95"}
    with open(folds[0] / "history.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow(extra)

    header, rule, row = curve_table({"arm": Run.load(cv)})
    cells = _cells(row)
    assert cells[0] == "arm"
    assert cells[1] == ", ".join(str(Run.load(f).info["best_epoch"]) for f in folds)
    firsts = [_history(f)[0] for f in folds]
    mean_auc = sum(float(r["val_roc_auc"]) for r in firsts) / len(firsts)
    mean_pauc = sum(float(r["val_pauc_80"]) for r in firsts) / len(firsts)
    assert cells[2] == f"1: {mean_auc:.3f} · 2: 0.900"
    assert cells[3] == f"1: {mean_pauc:.4f} · 2: 0.1500"
    # the gap at each fold's own last epoch
    lasts = [_history(f)[-1] for f in folds]
    gap = sum(float(r["train_roc_auc"]) - float(r["val_roc_auc"]) for r in lasts) / len(lasts)
    assert float(cells[4]) == pytest.approx(gap, abs=5e-4)
    assert lasts[0]["epoch"] == "2" and float(lasts[0]["train_roc_auc"]) - 0.9 == pytest.approx(0.05)


def test_fused_arm_pairs_with_its_cv_on_the_same_oof_images_and_is_reused(cv_dir, small_data, tmp_path):
    cv = Run.load(cv_dir)
    out = tmp_path / "stack"
    fused = fused_arm(cv, small_data, out, "stack")
    assert fused.kind == "tabular" and fused.info["features"]["metadata"]
    assert fused.fold_sha256 == cv.fold_sha256  # the cv's folds, so the two pair on OOF
    d = compare_runs([cv], [fused], metrics=("roc_auc",), n_boot=20)
    assert d["on"] == "oof"
    image = cv.oof().set_index("id").sort_index()
    both = fused.oof().set_index("id").sort_index()
    assert list(both.index) == list(image.index)
    expected = roc_auc_score(both["label"], both["prob"]) - roc_auc_score(image["label"], image["prob"])
    assert d["metrics"]["roc_auc"]["diff"] == pytest.approx(expected)
    # a complete folder is reused, not trained again
    stamp = (out / "run.json").stat().st_mtime_ns
    assert fused_arm(cv, small_data, out, "stack").path == fused.path
    assert (out / "run.json").stat().st_mtime_ns == stamp
