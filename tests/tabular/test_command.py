"""`lesionlab tabular` end to end on a small ISIC 2024 stand-in: the run folder, predict reproducing
the run's own test probabilities, fused runs with a hand-written cv folder, and the bad inputs."""
import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lesionlab
from conftest import cli, undeclared_record_keys
from lesionlab.metrics import ThresholdRule, compute_metrics
from lesionlab.runs import kinds
from tabular_fixtures import isic_raw, make_test_pair, write_cv_dir

FAST = ["--bootstrap", "50", "--num-threads", "1", "--max-rounds", "200", "--early-stopping", "20",
        "--min-child-samples", "5"]


@pytest.fixture(scope="module")
def isic(tmp_path_factory):
    """An ISIC 2024 stand-in prepared at 16 px and split by patient; a metadata-only run on it."""
    root = tmp_path_factory.mktemp("tab")
    raw = isic_raw(root / "raw")
    data = root / "data"
    cli("prepare", raw, "--out", data, "--size", "16", "--workers", "1")
    cli("split", data, "--val", "8:50", "--test", "8:50", "--seed", "0")
    run = root / "runs" / "meta"
    result = cli("tabular", "--data", data, "--out", run, *FAST)
    split = json.loads((data / "split.json").read_text())
    return {"root": root, "raw": raw, "data": data, "run": run, "split": split, "output": result.output}


@pytest.fixture(scope="module")
def cv_model(isic):
    """A tiny image model to put inside the hand-written cv folders (their one member)."""
    model = isic["root"] / "image-model"
    cli("train", "--data", isic["data"], "--out", model, "--epochs", "1", "--batch-size", "16", "--n-malignant", "10",
        "--bootstrap", "0", "--num-threads", "1")
    return model


def test_tabular_kind_found_without_importing_its_package(isic):
    """The tabular kind is declared in tabular/ (runs/ imports no feature package): a process that has
    imported only lesionlab.runs still reads a tabular folder, learns it scores rows and loads its predictor."""
    code = ("import sys\n"
            "from lesionlab.runs import load_predictor, load_run\n"
            "assert not any(m.startswith('lesionlab.tabular') for m in sys.modules), 'runs/ imported tabular'\n"
            f"run = load_run({str(isic['run'])!r})\n"
            "assert run.declared.takes == 'rows' and run.declared.has_oof, run.declared\n"
            "print(type(load_predictor(run)).__name__)\n")
    src = Path(lesionlab.__file__).parents[1]  # the package under test, in a fresh process
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(src)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "TabularPredictor"


def test_tabular_folder_holds_only_declared_record_keys(isic):
    assert undeclared_record_keys(isic["run"]) == []


def test_metadata_only_run_folder(isic):
    run = isic["run"]
    for f in ("config.yaml", "run.json", "metrics.json", "predictions.csv", "oof.csv", "importance.csv",
              "model/model.json", "model/fold-0.txt", "model/fold-4.txt", "figures/importance.png", "figures/roc.png",
              "figures/pr.png", "figures/confusion_test.png"):
        assert (run / f).exists(), f
    info = json.loads((run / "run.json").read_text())
    assert info["format"] == {"version": 1, "kind": "tabular"}
    assert info["split_sha256"] == hashlib.sha256((isic["data"] / "split.json").read_bytes()).hexdigest()
    feats = info["features"]
    assert "iddx_1" in feats["dropped"] and "label-derived" in feats["dropped"]["iddx_1"]
    assert "tbp_lv_dnn_lesion_confidence" in feats["dropped"] and "image_type" in feats["dropped"]
    assert "clin_size_long_diam_mm" in feats["metadata"] and "sex" in feats["metadata"]
    assert feats["patient_context"] and "lesion_size_ratio" in feats["recipe"]
    imp = pd.read_csv(run / "importance.csv")
    assert "clin_size_long_diam_mm_patient_z" in set(imp["feature"]) and "count_per_patient" in set(imp["feature"])

    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    assert list(oof.columns) == ["id", "group", "fold", "repeat", "label", "prob"]
    taken = set().union(*isic["split"]["assign"].values())
    assert len(oof) == oof["id"].nunique() and not set(oof["id"]) & taken  # the train pool, each image once
    assert oof.groupby("group")["fold"].nunique().max() == 1 and sorted(oof["fold"].unique()) == [0, 1, 2, 3, 4]

    metrics = json.loads((run / "metrics.json").read_text())
    preds = pd.read_csv(run / "predictions.csv", dtype={"id": str})
    assert list(preds.columns) == ["id", "split", "label", "prob", "group"]
    # each val/test image's group is its patient, as in oof.csv and the other kinds' predictions
    rows = pd.read_csv(isic["data"] / "rows.csv", dtype=str).set_index("id")
    assert (preds["group"] == "patient_id:" + rows.loc[preds["id"], "patient_id"].to_numpy()).all()
    assert (oof["group"] == "patient_id:" + rows.loc[oof["id"], "patient_id"].to_numpy()).all()
    val = preds[preds["split"] == "val"]
    assert metrics["val"]["threshold"] == pytest.approx(ThresholdRule.parse("val-f1").choose(val["label"], val["prob"]), abs=1e-5)
    for side, frame in (("test", preds[preds["split"] == "test"]), ("oof", oof)):
        again = compute_metrics(frame["label"], frame["prob"], metrics["val"]["threshold"])
        for k in ("roc_auc", "pauc_80", "average_precision", "f1"):
            assert again[k] == pytest.approx(metrics[side][k], abs=1e-4), (side, k)
        assert metrics[side]["ci95"]["roc_auc"][0] <= metrics[side]["roc_auc"] <= metrics[side]["ci95"]["roc_auc"][1]
    assert metrics["oof"]["roc_auc"] > 0.6  # the stand-in's metadata carries signal
    assert "out of fold ROC AUC" in isic["output"] and "Test ROC AUC" in isic["output"]


def test_predict_reproduces_the_runs_own_test_probabilities(isic, tmp_path):
    pair = make_test_pair(isic["raw"], isic["split"]["assign"]["test"], tmp_path / "pair")
    out = tmp_path / "p.csv"
    r = cli("predict", isic["run"], pair, "--out", out)
    assert "58 row(s) scored" in r.output
    got = pd.read_csv(out, dtype={"id": str}).set_index("id")
    preds = pd.read_csv(isic["run"] / "predictions.csv", dtype={"id": str})
    test = preds[preds["split"] == "test"].set_index("id")
    assert set(got.index) == set(test.index)
    assert np.abs(got.loc[test.index, "prob"].to_numpy() - test["prob"].to_numpy()).max() < 1e-6
    threshold = json.loads((isic["run"] / "metrics.json").read_text())["test"]["threshold"]
    assert (got["decision"] == (got["prob"] >= threshold).astype(int)).all()


def test_predict_names_the_missing_columns(isic, tmp_path):
    pair = make_test_pair(isic["raw"], isic["split"]["assign"]["test"], tmp_path / "pair", drop=("tbp_lv_H", "sex"))
    r = cli("predict", isic["run"], pair, "--out", tmp_path / "p.csv", ok=False)
    assert r.exit_code == 2 and "missing column(s) sex, tbp_lv_H" in r.output


def test_undersampling_report_and_compare(isic):
    under = isic["root"] / "runs" / "under"
    cli("tabular", "--data", isic["data"], "--out", under, "--neg-ratio", "2", "--seed", "1", *FAST)
    info = json.loads((under / "run.json").read_text())
    for fold in info["folds"]["per_fold"]:
        assert fold["fit_benign"] <= 2 * fold["fit_malignant"] + 1
    report = isic["root"] / "report"
    cli("report", isic["root"] / "runs", "--out", report, "--n-boot", "50")
    md = (report / "report.md").read_text()
    assert "lightgbm on metadata" in md and "importance.png" in md and "out of fold (train pool)" in md
    # two tabular runs on other folds (another seed): not paired out of fold unless asked for the test images
    r = cli("compare", isic["run"], under, "--n-boot", "50", ok=False)
    assert r.exit_code == 2 and "different folds" in r.output and "--on test" in r.output
    r = cli("compare", isic["run"], under, "--n-boot", "50", "--on", "test")
    assert "paired bootstrap on the same 58 test images" in r.output


def test_refusals_name_the_column(isic, tmp_path):
    r = cli("tabular", "--data", isic["data"], "--out", tmp_path / "a", "--features", "age_approx,iddx_1", *FAST, ok=False)
    assert r.exit_code == 2 and "--features iddx_1: refused, it is derived from the label" in r.output
    r = cli("tabular", "--data", isic["data"], "--out", tmp_path / "b", "--features", "patient_id", *FAST, ok=False)
    assert r.exit_code == 2 and "--features patient_id: a group key" in r.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _fused(isic, cv_dir, out, *extra, ok=True):
    return cli("tabular", "--data", isic["data"], "--out", out, "--image", cv_dir, *extra, *FAST, ok=ok)


def test_fused_run_end_to_end_on_tiny_images(isic, cv_model, tmp_path):
    cv = write_cv_dir(isic["data"], tmp_path / "cv", cv_model, k=3)
    run = tmp_path / "fused"
    _fused(isic, tmp_path / "cv", run, "--fusion", "stack")
    info = json.loads((run / "run.json").read_text())
    assert info["image"]["kind"] == "cv" and info["fusion"] == "stack" and info["folds"]["k"] == 3
    assert "the image model's" in info["folds"]["source"]
    imp = set(pd.read_csv(run / "importance.csv")["feature"])
    assert {"image_prob", "image_rank_in_patient", "image_ratio_to_patient_mean"} <= imp
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str}).merge(cv["oof"], on="id", suffixes=("", "_cv"))
    assert (oof["fold"] == oof["fold_cv"]).all()  # the image model's fold assignment
    assert np.abs(oof["prob_image"] - oof["prob_cv"]).max() < 1e-5
    preds = pd.read_csv(run / "predictions.csv", dtype={"id": str})
    ev = preds.merge(cv["predictions"], on=["id", "split"], suffixes=("", "_cv"))
    assert len(ev) == len(preds) and np.abs(ev["prob_image"] - ev["prob_cv"]).max() < 1e-5

    # predict runs the image model on the test images, then the tabular model: the run's test probabilities
    pair = make_test_pair(isic["raw"], isic["split"]["assign"]["test"], tmp_path / "pair")
    cli("predict", run, pair, "--out", tmp_path / "p.csv", "--workers", "1")
    got = pd.read_csv(tmp_path / "p.csv", dtype={"id": str}).set_index("id")
    test = preds[preds["split"] == "test"].set_index("id")
    assert np.abs(got.loc[test.index, "prob"].to_numpy() - test["prob"].to_numpy()).max() < 1e-5

    # late fusion: the rank average of image and metadata-only probabilities, reproduced by predict
    late = tmp_path / "late"
    _fused(isic, tmp_path / "cv", late, "--fusion", "late")
    lp = pd.read_csv(late / "predictions.csv", dtype={"id": str})
    lo = pd.read_csv(late / "oof.csv", dtype={"id": str})
    from lesionlab.tabular.fusion import rank_average

    expect = rank_average(lp["prob_image"], lp["prob_tabular"], lo["prob_image"], lo["prob_tabular"])
    # the CSVs hold 6 significant digits: a rounded score can cross a reference score that it was beside,
    # which moves its mid-rank by at most 1/len(reference) and the average of two ranks by half that
    gap = np.abs(expect - lp["prob"])
    assert gap.max() <= 1 / (2 * len(lo)) + 1e-6 and np.median(gap) < 1e-6
    cli("predict", late, pair, "--out", tmp_path / "l.csv", "--workers", "1")
    got = pd.read_csv(tmp_path / "l.csv", dtype={"id": str}).set_index("id")
    test = lp[lp["split"] == "test"].set_index("id")
    assert np.abs(got.loc[test.index, "prob"].to_numpy() - test["prob"].to_numpy()).max() < 1e-4

    # offset fusion, the default with --image: the metadata trees start from each image's logit (no image
    # features), reproduced by predict
    offset = tmp_path / "offset"
    _fused(isic, tmp_path / "cv", offset)
    assert json.loads((offset / "run.json").read_text())["fusion"] == "offset"
    assert not {f for f in pd.read_csv(offset / "importance.csv")["feature"] if f.startswith("image_")}
    op = pd.read_csv(offset / "predictions.csv", dtype={"id": str})
    assert np.abs(op["prob"] - op["prob_image"]).max() > 1e-3  # the metadata moved some scores
    cli("predict", offset, pair, "--out", tmp_path / "o.csv", "--workers", "1")
    got = pd.read_csv(tmp_path / "o.csv", dtype={"id": str}).set_index("id")
    test = op[op["split"] == "test"].set_index("id")
    assert np.abs(got.loc[test.index, "prob"].to_numpy() - test["prob"].to_numpy()).max() < 1e-5

    # compare pairs the fused run with its image cv on the same out-of-fold images (same folds, same lesions);
    # a metadata-only run has folds of its own, so pairing it on OOF is refused by name
    r = cli("compare", tmp_path / "cv", run, "--n-boot", "50")
    assert f"same {len(oof)} out-of-fold images" in r.output and "roc_auc" in r.output
    r = cli("compare", isic["run"], run, "--n-boot", "50", ok=False)
    assert r.exit_code == 2 and "different folds" in r.output and "--image CV_DIR" in r.output
    r = cli("compare", cv_model, run, "--n-boot", "50", "--on", "oof", ok=False)
    assert r.exit_code == 2 and "image-model is a train run without out-of-fold predictions" in r.output

    # the image model changed under the run (another fold assignment): predict refuses
    doc = json.loads((tmp_path / "cv" / "run.json").read_text())
    doc["fold_sha256"] = "another"
    (tmp_path / "cv" / "run.json").write_text(json.dumps(doc))
    r = cli("predict", run, pair, "--out", tmp_path / "q.csv", ok=False)
    assert r.exit_code == 2 and "no longer the one this run was trained with" in r.output


@pytest.mark.parametrize("fusion", ["stack", "offset"])
def test_training_image_features_are_out_of_fold_only(isic, cv_model, tmp_path, monkeypatch, fusion):
    """oof.csv holds noise; everything else the image model could say about a training image is the
    label itself (its predictor answers with the label, as an in-sample score would). The fused model
    must see the noise (as features or as its offset): an in-sample score leaking in would push its
    out-of-fold AUC to 1."""
    from lesionlab.data.store import Store

    store = Store.open(isic["data"])
    label_of = {hashlib.sha1(store.pixels([i])[0].tobytes()).hexdigest(): float(lab)
                for i, lab in enumerate(store.table["label"])}

    class Oracle:
        size, fit, threshold = store.size, store.fit, 0.5

        def probabilities(self, images, batch_size=256):
            return np.array([label_of[hashlib.sha1(im.tobytes()).hexdigest()] for im in images])

    monkeypatch.setitem(kinds._REGISTRY, "cv", dataclasses.replace(kinds.run_kind("cv"), loader=lambda run, device="auto": Oracle()))
    split = isic["split"]["assign"]
    n_train = len(store.table) - sum(len(v) for v in split.values())
    noise = np.random.default_rng(5).uniform(size=n_train)
    ev = {s: np.random.default_rng(6).uniform(size=len(split[s])) for s in ("val", "test")}
    write_cv_dir(isic["data"], tmp_path / "cv", None, k=3, oof_prob=noise, eval_prob=ev)
    run = tmp_path / "fused"
    _fused(isic, tmp_path / "cv", run, "--features", "age_approx,sex", "--fusion", fusion)  # weak metadata: the image score would dominate
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    hand = pd.read_csv(tmp_path / "cv" / "oof.csv", dtype={"id": str}).set_index("id")
    assert np.abs(oof["prob_image"].to_numpy() - hand.loc[oof["id"], "prob"].to_numpy()).max() < 1e-5
    # within each fold (pooled out-of-fold AUC also mixes the fold models' calibrations)
    from lesionlab.metrics import roc_auc

    within = [roc_auc(f["label"], f["prob"]) for _, f in oof.groupby("fold")]
    assert np.mean(within) < 0.9, within
    # at predict time the image model does score the new images (they were never training images)
    pair = make_test_pair(isic["raw"], split["test"], tmp_path / "pair")
    cli("predict", run, pair, "--out", tmp_path / "p.csv", "--workers", "1")


def test_image_models_of_another_split_or_fold_assignment_are_refused(isic, tmp_path):
    cv = tmp_path / "other-split"
    write_cv_dir(isic["data"], cv, None, k=3, split_sha256="0" * 64)
    r = _fused(isic, cv, tmp_path / "a", ok=False)
    assert r.exit_code == 2 and "trained on another split" in r.output

    good = tmp_path / "cv3"
    write_cv_dir(isic["data"], good, None, k=3)
    r = _fused(isic, good, tmp_path / "b", "--folds", "4", ok=False)
    assert r.exit_code == 2 and "--folds 4: the image model at" in r.output and "has 3 folds" in r.output

    oof = pd.read_csv(good / "oof.csv", dtype={"id": str})
    big = oof["group"].value_counts().index[0]  # a patient with several images, cut across two folds
    rows = np.flatnonzero(oof["group"] == big)
    folds = oof["fold"].to_numpy().copy()
    folds[rows[0]] = (folds[rows[0]] + 1) % 3
    cut = tmp_path / "cut"
    write_cv_dir(isic["data"], cut, None, k=3, folds=folds)
    r = _fused(isic, cut, tmp_path / "c", ok=False)
    assert r.exit_code == 2 and "another fold assignment" in r.output and big in r.output

    oof.iloc[1:].to_csv(good / "oof.csv", index=False)
    r = _fused(isic, good, tmp_path / "d", ok=False)
    assert r.exit_code == 2 and "1 train-pool image(s) have no out-of-fold score" in r.output
    for fusion in ("late", "offset", "stack"):
        r = cli("tabular", "--data", isic["data"], "--out", tmp_path / fusion, "--fusion", fusion, *FAST, ok=False)
        assert r.exit_code == 2 and f"--fusion {fusion} needs --image" in r.output


def test_ham_style_manifest_refuses_its_label_columns_and_predict_reads_a_manifest(small_data, tmp_path):
    """HAM10000's manifest: dx, dx_type and the other label columns are refused automatically; no
    patient_id, so no patient statistics; predict takes a manifest of rows with the same columns."""
    run = tmp_path / "ham"
    cli("tabular", "--data", small_data, "--out", run, *FAST)
    info = json.loads((run / "run.json").read_text())
    assert info["features"]["metadata"] == ["age", "sex", "localization"]
    for col in ("dx", "dx_type", "isic2019_dx", "melanoma", "label_ham_mel_bcc_akiec"):
        assert "label-derived" in info["features"]["dropped"][col], col
    assert not info["features"]["patient_context"] and info["group"] == "lesion_id"
    metrics = json.loads((run / "metrics.json").read_text())  # intervals resample whole lesions, as in every run kind
    assert all(metrics[side]["ci95_unit"] == "lesion_id" for side in ("val", "test", "oof"))
    rows = pd.read_csv(small_data / "rows.csv", dtype=str, keep_default_na=False)
    test_ids = set(json.loads((small_data / "split.json").read_text())["assign"]["test"])
    manifest = rows[rows["id"].isin(test_ids)].rename(columns={"locator": "path"}).drop(columns=["index"])
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    cli("predict", run, tmp_path / "manifest.csv", "--out", tmp_path / "p.csv")
    got = pd.read_csv(tmp_path / "p.csv", dtype={"id": str}).set_index("id")
    preds = pd.read_csv(run / "predictions.csv", dtype={"id": str})
    test = preds[preds["split"] == "test"].set_index("id")
    assert np.abs(got.loc[test.index, "prob"].to_numpy() - test["prob"].to_numpy()).max() < 1e-6
    manifest.drop(columns=["localization"]).to_csv(tmp_path / "m2.csv", index=False)
    r = cli("predict", run, tmp_path / "m2.csv", "--out", tmp_path / "q.csv", ok=False)
    assert r.exit_code == 2 and "missing column(s) localization" in r.output


def test_metadata_is_read_back_through_the_formula_safe_csv(tmp_path):
    """rows.csv is written formula-safe: an id such as '=x' and a negative number held as text
    ('-1.5) read back as the user gave them, so ids match the store's and numbers stay numbers."""
    from types import SimpleNamespace

    from lesionlab.fileio import write_csv
    from lesionlab.tabular.command import read_metadata

    rows = pd.DataFrame({"id": ["=x", "b"], "label": ["1", "0"], "locator": ["a.jpg", "b.jpg"], "index": ["0", "1"],
                         "tbp_lv_x": ["-1.5", "2"], "sex": ["-", "male"]})
    write_csv(tmp_path / "rows.csv", rows)
    assert "'=x" in (tmp_path / "rows.csv").read_text() and "'-1.5" in (tmp_path / "rows.csv").read_text()
    table = read_metadata(SimpleNamespace(root=tmp_path, table=pd.DataFrame({"id": ["=x", "b"]})))
    assert table["id"].tolist() == ["=x", "b"] and table["sex"].tolist() == ["-", "male"]
    assert table["tbp_lv_x"].tolist() == [-1.5, 2.0]
