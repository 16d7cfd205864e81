"""Cross-validation, out-of-fold predictions, grouped bootstrap, ensembles and test-time augmentation."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from conftest import RUN_FLAGS as FLAGS  # the tiny runs' flags, one list for every file
from conftest import cli, undeclared_record_keys
from lesionlab.runs import Run, load_predictor, read_table

# ---------------------------------------------------------------- cv end to end


def _positions(store, ids):
    index = pd.Series(np.arange(len(store.table)), index=store.table["id"].astype(str))
    return index.loc[list(ids)].to_numpy()


def test_cv_folder_holds_folds_oof_and_the_fold_ensemble(cv_dir, small_data):
    from lesionlab.data.splits import load_split
    from lesionlab.data.store import Store

    run = Run.load(cv_dir)
    assert run.kind == "cv" and run.info["folds"] == 3 and run.info["group_rule"] == "lesion_id"
    store = Store.open(small_data)
    split = load_split(store)
    pool_ids = set(store.table["id"].iloc[split.positions(store.table, "train")])
    oof = read_table(cv_dir / "oof.csv")
    assert list(oof.columns[:6]) == ["id", "group", "fold", "repeat", "label", "prob"]
    assert set(oof["id"]) == pool_ids and len(oof) == len(pool_ids)
    assert oof.groupby("group")["fold"].nunique().max() == 1
    folds = [Run.load(cv_dir / "folds" / str(k)) for k in range(3)]
    test_ids = set(split.ids("test")) | set(split.ids("val"))
    for k, fold in enumerate(folds):
        preds = fold.predictions()
        held = set(preds.loc[preds["split"] == "oof", "id"])
        assert held == set(oof.loc[oof["fold"] == k, "id"])
        inner = set(preds.loc[preds["split"] == "val", "id"])
        drawn = set(pd.read_csv(fold.path / "train_draw.csv", dtype={"id": str})["id"])
        assert not inner & held and not drawn & held and not drawn & inner
        assert not (inner | drawn) & test_ids  # never the split's val or test
        groups_of = dict(zip(preds["id"], preds["group"]))
        assert not {groups_of[i] for i in inner} & {groups_of[i] for i in held}
        assert fold.metrics["val"]["n_malignant"] == 10 and fold.metrics["val"]["n_benign"] == 40  # the split's val counts
    # OOF metrics recomputed with scikit-learn from oof.csv
    m = json.loads((cv_dir / "cv.json").read_text())["oof"]
    y, p = oof["label"].to_numpy(), oof["prob"].to_numpy()
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-6)
    assert m["f1"] == pytest.approx(skm.f1_score(y, p >= oof["threshold"].to_numpy()), abs=1e-9)
    assert m["ci95_unit"] == "lesion_id" and m["ci95"]["roc_auc"][0] <= m["roc_auc"] <= m["ci95"]["roc_auc"][1]
    assert run.metrics["oof"]["roc_auc"] == m["roc_auc"]
    # the fold ensemble on the split's test set is the mean of the folds' probabilities
    ens = run.predictions("test").sort_values("id")
    mean = np.mean([f.predictions("test").sort_values("id")["prob"].to_numpy() for f in folds], axis=0)
    assert np.abs(ens["prob"].to_numpy() - mean).max() < 1e-5
    assert set(run.predictions("val")["id"]) == set(split.ids("val"))


def test_cv_folder_and_its_folds_hold_only_declared_record_keys(cv_dir):
    folds = sorted(p.parent for p in (cv_dir / "folds").rglob("metrics.json"))
    assert folds and [k for folder in [cv_dir, *folds] for k in undeclared_record_keys(folder)] == []


def test_predict_with_a_cv_folder_is_its_fold_ensemble(cv_dir, small_data):
    from lesionlab.data.store import Store

    store = Store.open(small_data)
    test = Run.load(cv_dir).predictions("test")
    images = store.pixels(_positions(store, test["id"]))
    probs = load_predictor(cv_dir, device="cpu").probabilities(images)
    assert np.abs(probs - test["prob"].to_numpy()).max() < 1e-4
    assert load_predictor(cv_dir, device="cpu").threshold == Run.load(cv_dir).info["threshold"]


def test_cv_resumes_with_the_same_config_and_refuses_another(cv_dir, small_data):
    stamp = (cv_dir / "folds" / "0" / "checkpoint.pt").stat().st_mtime_ns
    r = cli("cv", "--data", small_data, "--out", cv_dir, "--folds", "3", *FLAGS)
    assert "complete" in r.output and (cv_dir / "folds" / "0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    r = cli("cv", "--data", small_data, "--out", cv_dir, "--folds", "3", *FLAGS, "--lr", "0.01", ok=False)
    assert r.exit_code == 2 and "another config" in r.output and "lr" in r.output
    r = cli("cv", "--data", small_data, "--out", cv_dir, "--folds", "2", *FLAGS, ok=False)
    assert r.exit_code == 2 and "folds" in r.output


def test_a_cv_made_before_a_config_key_existed_still_resumes(cv_dir, small_data, tmp_path):
    """Upgrading lesionlab adds config keys (calibrate, tta, ...): a cv started before resumes, the new
    key counting as its default."""
    old = tmp_path / "cv"
    shutil.copytree(cv_dir, old)
    plan = json.loads((old / "cv_plan.json").read_text())
    del plan["config"]["calibrate"]
    (old / "cv_plan.json").write_text(json.dumps(plan))
    r = cli("cv", "--data", small_data, "--out", old, "--folds", "3", *FLAGS)
    assert "complete" in r.output


@pytest.mark.parametrize("folds,msgs", [("1", ["at least 2"]), ("40", ["lesions", "with a malignant image", "or fewer"])])
def test_cv_refuses_impossible_fold_counts(small_data, tmp_path, folds, msgs):
    r = cli("cv", "--data", small_data, "--out", tmp_path / "cv", "--folds", folds, *FLAGS, ok=False)
    assert r.exit_code == 2 and all(m in r.output for m in msgs), r.output
    assert not (tmp_path / "cv").exists()


def test_cv_refuses_a_folder_that_holds_something_else(small_data, tmp_path):
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "notes.txt").write_text("mine")
    r = cli("cv", "--data", small_data, "--out", tmp_path / "cv", "--folds", "3", *FLAGS, ok=False)
    assert r.exit_code == 2 and "not a cross-validation folder" in r.output


@pytest.mark.slow
def test_a_killed_fold_restarts_cleanly_and_finished_folds_are_not_retrained(small_data, tmp_path, monkeypatch):
    import lesionlab.workflows.cv as cv_module
    from lesionlab.config import build_config

    cfg = build_config({"data": str(small_data), "epochs": 1, "batch_size": 16, "n_malignant": 10, "bootstrap": 20,
                        "num_threads": 1})
    out = tmp_path / "cv"
    real, trained = cv_module.train, []

    def killed_at_fold_1(c, folder, on_epoch=None, plan=None):
        def die(row):
            raise KeyboardInterrupt  # as a kill in the middle of the fold
        return real(c, folder, die if folder.name == "1" else None, plan)

    monkeypatch.setattr(cv_module, "train", killed_at_fold_1)
    with pytest.raises(KeyboardInterrupt):
        cv_module.run_cv(cfg, out, 3, echo=lambda s: None)
    assert (out / "folds" / "0" / "metrics.json").exists() and not (out / "folds" / "1").exists()
    stale = out / "folds" / ".1.partial-killed0"  # what a SIGKILL would leave behind
    stale.mkdir()
    (stale / "junk").write_text("half-written")
    stamp = (out / "folds" / "0" / "checkpoint.pt").stat().st_mtime_ns

    def counting(c, folder, on_epoch=None, plan=None):
        trained.append(folder.name)
        return real(c, folder, None, plan)

    monkeypatch.setattr(cv_module, "train", counting)
    # resumed as a job array of two tasks: task 1 takes fold 1, task 0 folds 0 (complete) and 2, then finishes
    res = cv_module.run_cv(cfg, out, 3, echo=lambda s: None, task_index=1, task_count=2)
    assert trained == ["1"] and not res["complete"] and res["left"] == [str(out / "folds" / "2")]
    assert not (out / "metrics.json").exists()
    res = cv_module.run_cv(cfg, out, 3, echo=lambda s: None, task_index=0, task_count=2)
    assert trained == ["1", "2"] and res["complete"]
    assert (out / "folds" / "0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert not stale.exists() and Run.load(out).kind == "cv"
    assert len(read_table(out / "oof.csv")) == Run.load(out).metrics["oof"]["n_malignant"] + \
        Run.load(out).metrics["oof"]["n_benign"]


def test_cv_gives_each_fold_its_own_synthetic_set():
    from lesionlab.config import build_config
    from lesionlab.workflows.cv import fold_config
    from lesionlab.workflows.train import FoldPlan

    cfg = build_config({"data": "d", "synthetic": {"data": "syn/fold{fold}", "n": 5}}, "test")
    plan = FoldPlan(np.arange(3), np.arange(1), {}, {"repeat": 0, "fold": 3, "repeats": 1})
    assert fold_config(cfg, plan).synthetic.data == "syn/fold3"
    plan2 = FoldPlan(np.arange(3), np.arange(1), {}, {"repeat": 1, "fold": 0, "repeats": 2})
    assert fold_config(cfg, plan2).synthetic.data == "syn/foldr1-0"
    same = build_config({"data": "d", "synthetic": {"data": "syn", "n": 5}}, "test")
    assert fold_config(same, plan) is same
