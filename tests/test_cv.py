"""Cross-validation, out-of-fold predictions, grouped bootstrap, ensembles and test-time augmentation."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from conftest import cli, undeclared_record_keys
from lesionlab.data.folds import inner_validation, make_folds
from lesionlab.data.tta import n_views, tta_logits, view
from lesionlab.errors import BadInputError, NotEnoughDataError
from lesionlab.metrics import bootstrap_ci, paired_bootstrap
from lesionlab.runs import Run, load_predictor, read_table

FLAGS = ["--epochs", "1", "--batch-size", "16", "--n-malignant", "10", "--bootstrap", "20", "--num-threads", "1"]

# ---------------------------------------------------------------- folds


def _grouped_pool(n_groups=120, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_groups)
    groups = np.repeat([f"g{i}" for i in range(n_groups)], sizes)
    group_label = rng.random(n_groups) < 0.25
    labels = np.repeat(group_label, sizes).astype(int)
    labels[rng.random(len(labels)) < 0.05] = 0  # some groups mix classes
    ids = np.array([f"img{i}" for i in range(len(labels))])
    return ids, labels, groups


def test_folds_are_grouped_stratified_and_cover_the_pool_once_per_repeat():
    ids, labels, groups = _grouped_pool()
    pool = np.arange(5, len(ids))  # the first images belong to val/test
    folds = make_folds(ids, labels, groups, pool, k=4, repeats=2, seed=3)
    assert folds.assign.shape == (2, len(pool)) and set(np.unique(folds.assign)) == {0, 1, 2, 3}
    for r in range(2):
        held = np.concatenate([folds.held_out(r, f) for f in range(4)])
        assert sorted(held) == sorted(pool)  # every pool image in exactly one held-out fold
        frame = pd.DataFrame({"g": folds.groups, "fold": folds.assign[r]})
        assert frame.groupby("g")["fold"].nunique().max() == 1  # no group in two folds
        shares = [folds.labels[folds.assign[r] == f].mean() for f in range(4)]
        assert max(shares) - min(shares) < 0.12  # stratified
    assert not np.array_equal(folds.assign[0], folds.assign[1])  # repeats reshuffle
    again = make_folds(ids, labels, groups, pool, k=4, repeats=2, seed=3)
    assert again.sha256 == folds.sha256
    assert make_folds(ids, labels, groups, pool, k=4, repeats=2, seed=4).sha256 != folds.sha256


def test_fold_count_is_checked_against_the_groups_of_each_class():
    ids, labels, groups = _grouped_pool()
    pool = np.arange(len(ids))
    with pytest.raises(BadInputError, match="at least 2"):
        make_folds(ids, labels, groups, pool, k=1)
    n_mal = pd.Series(groups[labels == 1]).nunique()
    with pytest.raises(NotEnoughDataError, match=rf"{n_mal} of them with a malignant image") as e:
        make_folds(ids, labels, groups, pool, k=n_mal + 1)
    assert f"--folds {n_mal} or fewer" in str(e.value)


def test_inner_validation_takes_whole_groups_with_exact_counts():
    ids, labels, groups = _grouped_pool(300)
    positions = np.arange(len(ids))
    val, aside = inner_validation(labels, groups, positions, (10, 40), seed=[0, 0, 1])
    assert labels[val].sum() == 10 and (labels[val] == 0).sum() == 40
    rest = np.setdiff1d(positions, np.r_[val, aside])
    assert not set(groups[val]) & set(groups[rest])  # the training part shares no group with it
    with pytest.raises(NotEnoughDataError, match="inner validation"):
        inner_validation(labels, groups, positions[:30], (10, 40), seed=0)


# ---------------------------------------------------------------- grouped bootstrap


def test_grouped_interval_is_wider_when_a_lesion_has_several_near_identical_images():
    rng = np.random.default_rng(0)
    n_lesions, per = 150, 6
    y_lesion = (rng.random(n_lesions) < 0.25).astype(int)
    score_lesion = rng.normal(0, 1, n_lesions) + 1.0 * y_lesion
    y = np.repeat(y_lesion, per)
    s = np.repeat(score_lesion, per) + rng.normal(0, 0.01, n_lesions * per)  # near-identical images
    groups = np.repeat(np.arange(n_lesions), per).astype(str)
    flat = bootstrap_ci(y, s, 0.5, n_boot=400, seed=0)
    grouped = bootstrap_ci(y, s, 0.5, n_boot=400, seed=0, groups=groups)
    for k in ("roc_auc", "average_precision", "pauc_80", "f1"):
        assert grouped[k][1] - grouped[k][0] > 1.5 * (flat[k][1] - flat[k][0]), k
    # singleton groups are the per-image bootstrap again (in distribution)
    single = bootstrap_ci(y, s, 0.5, n_boot=400, seed=0, groups=np.arange(len(y)).astype(str))
    assert abs((single["roc_auc"][1] - single["roc_auc"][0]) - (flat["roc_auc"][1] - flat["roc_auc"][0])) < 0.01
    d_flat = paired_bootstrap(y, s, s + rng.normal(0, 0.3, len(s)), 0.5, 0.5, ("roc_auc",), n_boot=300)
    d_grp = paired_bootstrap(y, s, s + rng.normal(0, 0.3, len(s)), 0.5, 0.5, ("roc_auc",), n_boot=300, groups=groups)
    assert d_grp["roc_auc"]["hi"] - d_grp["roc_auc"]["lo"] > d_flat["roc_auc"]["hi"] - d_flat["roc_auc"]["lo"]


# ---------------------------------------------------------------- TTA


def test_tta_views_are_the_eight_symmetries_and_an_invariant_model_is_unchanged(small_data):
    from lesionlab.engine.runtime import MEAN, STD, resolve_runtime
    from lesionlab.runs.predictor import ModelPredictor

    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    assert n_views("flip") == 4 and n_views("d4") == 8
    assert len({view(x, k).tobytes() for k in range(8)}) == 8
    assert np.array_equal(tta_logits(lambda v: v.reshape(len(v), -1).mean(1), x, "d4"), x.reshape(3, -1).mean(1))

    torch.manual_seed(0)
    # global pooling makes the network invariant to every flip and quarter turn
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 1))
    images = np.random.default_rng(1).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    pred = ModelPredictor(net.eval(), 32, "stretch", 0.5, resolve_runtime("cpu", "32", "false"), MEAN, STD)
    plain = pred.probabilities(images)
    for mode in ("flip", "d4"):
        pred.set_tta(mode)
        assert np.abs(pred.probabilities(images) - plain).max() < 1e-6
    with pytest.raises(BadInputError, match="--tta"):
        pred.set_tta("d8")


# ---------------------------------------------------------------- cv end to end


@pytest.fixture(scope="module")
def cv_dir(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "cv"
    cli("cv", "--data", small_data, "--out", out, "--folds", "3", *FLAGS)
    return out


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


@pytest.mark.slow
def test_compare_pairs_cvs_on_oof_and_refuses_different_folds(cv_dir, small_data, tmp_path):
    other = tmp_path / "cv_lr"
    cli("cv", "--data", small_data, "--out", other, "--folds", "3", *FLAGS, "--lr", "0.001")
    r = cli("compare", cv_dir, other, "--n-boot", "50")
    assert "out-of-fold images" in r.output and "lesion_id" in r.output
    n_pool = len(read_table(cv_dir / "oof.csv"))
    assert f"same {n_pool} out-of-fold" in r.output
    moved = tmp_path / "cv_seed"
    cli("cv", "--data", small_data, "--out", moved, "--folds", "3", *FLAGS, "--fold-seed", "7")
    r = cli("compare", cv_dir, moved, "--n-boot", "50", ok=False)
    assert r.exit_code == 2 and "different folds" in r.output


# ---------------------------------------------------------------- ensembles


@pytest.fixture(scope="module")
def two_runs(small_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    for seed in (0, 1):
        cli("train", "--data", small_data, "--out", root / f"s{seed}", *FLAGS, "--seed", seed)
    return root / "s0", root / "s1"


def test_ensemble_probabilities_are_the_mean_of_the_members(two_runs, cv_dir, small_data, tmp_path):
    a, b = two_runs
    ens = tmp_path / "ens"
    cli("ensemble", a, b, "--out", ens, "--n-boot", "20")
    run = Run.load(ens)
    assert run.kind == "ensemble" and run.info["n_members"] == 2
    assert undeclared_record_keys(ens) == []
    for side in ("val", "test"):
        got = run.predictions(side).sort_values("id")
        members = [Run.load(m).predictions(side).sort_values("id") for m in (a, b)]
        assert np.abs(got["prob"].to_numpy() - np.mean([m["prob"].to_numpy() for m in members], axis=0)).max() < 1e-5
    entries = json.loads((ens / "members.json").read_text())
    assert entries[0]["preprocessing"]["size"] == 32 and entries[0]["preprocessing"]["tta"] == "none"
    # logit mean, and a run plus a cv folder (its folds) in one ensemble
    ens_logit = tmp_path / "ens_logit"
    cli("ensemble", a, cv_dir, "--out", ens_logit, "--mean", "logit", "--n-boot", "20")
    run = Run.load(ens_logit)
    assert run.info["n_members"] == 4
    sides = [Run.load(a).predictions("test")] + [Run.load(cv_dir / "folds" / str(k)).predictions("test") for k in range(3)]
    logits = [np.log(p.sort_values("id")["prob"].to_numpy() / (1 - p.sort_values("id")["prob"].to_numpy())) for p in sides]
    want = 1 / (1 + np.exp(-np.mean(logits, axis=0)))
    assert np.abs(run.predictions("test").sort_values("id")["prob"].to_numpy() - want).max() < 1e-4
    # predict with the ensemble folder scores as the mean of its members
    preds = tmp_path / "p.csv"
    cli("predict", ens, _sample_images(small_data), "--out", preds)
    p_ens = pd.read_csv(preds)
    p_a, p_b = (pd.read_csv(p) for p in (_predict(a, small_data, tmp_path, "a"), _predict(b, small_data, tmp_path, "b")))
    assert np.abs(p_ens["prob"] - (p_a["prob"] + p_b["prob"]) / 2).max() < 1e-5


def _sample_images(small_data):
    return small_data.parent / "raw" / "images"


def _predict(run, small_data, tmp_path, name):
    out = tmp_path / f"{name}.csv"
    cli("predict", run, _sample_images(small_data), "--out", out)
    return out


def test_ensemble_with_d4_tta_is_recorded_and_applied_by_predict(two_runs, tmp_path, small_data):
    a, b = two_runs
    ens = tmp_path / "ens_d4"
    cli("ensemble", a, b, "--out", ens, "--tta", "d4", "--n-boot", "20")
    run = Run.load(ens)
    assert run.info["tta_override"] == "d4"
    assert all(e["preprocessing"]["tta"] == "d4" for e in json.loads((ens / "members.json").read_text()))
    predictor = load_predictor(ens, device="cpu")
    assert all(m.tta == "d4" for m in predictor.members)


def test_ensemble_refuses_members_of_other_splits_or_preprocessing(two_runs, small_data, tmp_path):
    from lesionlab.data.splits import make_split, save_split, split_path
    from lesionlab.data.store import Store

    a, b = two_runs
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    save_split(make_split(Store.open(data), (10, 40), (10, 40), seed=5), split_path(data, "other"))
    other = tmp_path / "other"
    cli("train", "--data", data, "--split", "other", "--out", other, *FLAGS)
    r = cli("ensemble", a, other, "--out", tmp_path / "e1", ok=False)
    assert r.exit_code == 2 and "different splits" in r.output
    crop = tmp_path / "crop"
    shutil.copytree(b, crop)
    ckpt = torch.load(crop / "checkpoint.pt", weights_only=True)
    ckpt["fit"] = "crop"
    torch.save(ckpt, crop / "checkpoint.pt")
    r = cli("ensemble", a, crop, "--out", tmp_path / "e2", ok=False)
    assert r.exit_code == 2 and "incompatible preprocessing" in r.output
    r = cli("ensemble", a, a, "--out", tmp_path / "e3", ok=False)
    assert r.exit_code == 2 and "twice" in r.output


def test_train_records_the_bootstrap_unit_and_tta(two_runs, small_data, tmp_path):
    a, _ = two_runs
    m = Run.load(a).metrics
    assert m["test"]["ci95_unit"] == "lesion_id" and m["test"]["n_groups"] >= 1
    assert "group" in Run.load(a).predictions().columns
    out = tmp_path / "tta"
    cli("train", "--data", small_data, "--out", out, *FLAGS, "--tta", "flip")
    run = Run.load(out)
    assert run.info["tta"] == "flip" and run.config["tta"] == "flip"
    assert load_predictor(out, device="cpu").tta == "flip"
    assert os.path.exists(out / "metrics.json")


def test_report_shows_cv_and_ensemble_sections(cv_dir, two_runs, tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copytree(cv_dir, root / "cv")
    cli("ensemble", root / "cv", "--out", root / "ens", "--tta", "flip", "--n-boot", "20")
    cli("report", root, "--out", tmp_path / "rep", "--baseline", "cv")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "### cross-validation" in md and "Per fold:" in md and "Out-of-fold 95% bootstrap intervals" in md
    assert "whole lesion\\_id groups" in md and "### ensemble" in md and "test-time augmentation flip" in md
    assert "figures/cv_cv_oof_roc.png" in md and (tmp_path / "rep" / "figures" / "cv_cv_oof_roc.png").exists()
    assert "| ens | 1 | test (lesion\\_id)" in md  # cells are Markdown-escaped
