"""The ISIC Archive's "ISIC 2024 Permissive Training" release read as shipped, its label-derived
columns kept out of every model, and the Kaggle competition's submission file from every run kind."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import cli
from isic2024_fixture import PERMISSIVE, SUPPLEMENT_COLUMNS, write_isic2024_permissive, write_kaggle_test
from lesionlab.data.sources import detect_format, read_source
from lesionlab.data.store import Store, prepare
from lesionlab.errors import BadInputError, LeakError

GT, SUP, INPUT = f"{PERMISSIVE}_GroundTruth.csv", f"{PERMISSIVE}_Supplement.csv", f"{PERMISSIVE}_Input"
LABEL_DERIVED = ["lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index",
                 "mel_thick_mm"]
FAST_TRAIN = ["--epochs", "1", "--batch-size", "16", "--n-malignant", "all", "--bootstrap", "0", "--num-threads", "1",
              "--eval-batch-size", "64"]
FAST_TAB = ["--bootstrap", "0", "--num-threads", "1", "--max-rounds", "50", "--early-stopping", "10",
            "--min-child-samples", "3"]


@pytest.fixture
def release(tmp_path):
    return write_isic2024_permissive(tmp_path / "release", n=40, n_positive=8)


def test_release_is_detected_and_read_as_shipped(release):
    assert detect_format(release) == "isic2024-permissive"
    assert detect_format(release / GT) == "isic2024-permissive"
    truth = pd.read_csv(release / GT, dtype=str)
    supplement = pd.read_csv(release / SUP, dtype=str, keep_default_na=False)
    assert set(truth["malignant"]) == {"1.0", "0.0"}  # as the archive writes it
    src = read_source(release)
    t = src.table
    assert src.format == "isic2024-permissive" and src.location == release / GT
    assert t["id"].tolist() == truth["isic_id"].tolist()
    assert t["label"].tolist() == (truth["malignant"] == "1.0").astype(int).tolist()
    assert t["lesion_id"].tolist() == supplement["lesion_id"].tolist()  # the group column
    assert (t.loc[t["label"] == 1, "lesion_id"] != "").all()
    assert t["locator"].tolist() == [f"{INPUT}/{i}.jpg" for i in truth["isic_id"]]
    # the Supplement's columns are the metadata, joined by id (not by row order)
    metadata = [c for c in SUPPLEMENT_COLUMNS if c not in ("isic_id", "lesion_id")]
    assert [c for c in t.columns if c in metadata] == metadata
    assert t["attribution"].tolist() == supplement["attribution"].tolist()
    shuffled = supplement.sample(frac=1, random_state=0)
    shuffled.to_csv(release / SUP, index=False)
    again = read_source(release).table
    assert again["iddx_full"].tolist() == supplement["iddx_full"].tolist()
    # the archive's ATTRIBUTION.txt and LICENSE.txt in the Input folder are not images
    assert len(again) == 40


def test_release_prepares_and_splits_by_lesion_where_filled(release, tmp_path):
    data = tmp_path / "data"
    r = cli("prepare", release, "--out", data, "--size", "16", "--workers", "1")
    assert "isic2024-permissive layout, 40 images (8 malignant)" in r.output
    store = Store.open(data)
    meta = store.metadata()
    assert {"attribution", "copyright_license", "iddx_full", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence"} <= set(meta)
    assert store.meta["source"]["format"] == "isic2024-permissive"
    r = cli("split", data, "--val", "2:8", "--test", "2:8")
    assert "grouped by lesion_id" in r.output
    # a changed Supplement is a changed input: the store is not silently reused with old metadata
    sup = pd.read_csv(release / SUP, dtype=str, keep_default_na=False)
    sup.loc[0, "attribution"] = "ACEMID MIA"
    sup.to_csv(release / SUP, index=False)
    r = cli("prepare", release, "--out", data, "--size", "16", "--workers", "1", ok=False)
    assert r.exit_code == 2 and "already holds a prepared data set" in r.output


def test_isic2019_ground_truth_is_still_its_own_layout(tmp_path):
    (tmp_path / "ISIC_2019_Training_Input").mkdir()
    pd.DataFrame({"image": ["ISIC_0000000"], "MEL": [1.0], "NV": [0.0]}).to_csv(
        tmp_path / "ISIC_2019_Training_GroundTruth.csv", index=False)
    assert detect_format(tmp_path) == "isic-csv"
    assert detect_format(tmp_path / "ISIC_2019_Training_GroundTruth.csv") == "isic-csv"


def _drop_image(release, k=1):
    ids = sorted(p.stem for p in (release / INPUT).glob("*.jpg"))[:k]
    for i in ids:
        (release / INPUT / f"{i}.jpg").unlink()
    return ids


def _edit_truth(release, k, value):
    gt = pd.read_csv(release / GT, dtype=str)
    gt.loc[k, "malignant"] = value
    gt.to_csv(release / GT, index=False)
    return gt.loc[k, "isic_id"]


def _edit_supplement(release, how):
    sup = pd.read_csv(release / SUP, dtype=str, keep_default_na=False)
    if how == "duplicate":
        sup = pd.concat([sup, sup.iloc[[3]]])
        sup.to_csv(release / SUP, index=False)
        return sup.iloc[3]["isic_id"]
    if how == "foreign":
        sup.loc[5, "isic_id"] = "ISIC_9999999"
        sup.to_csv(release / SUP, index=False)
        return "ISIC_9999999"
    gone = sup.iloc[7]["isic_id"]
    sup.drop(index=7).to_csv(release / SUP, index=False)
    return gone


@pytest.mark.parametrize("case", ["no supplement", "no input", "no ground truth", "label 2.0", "label yes",
                                  "unlisted image", "supplement duplicate", "supplement foreign", "supplement lacks"])
def test_bad_releases_name_the_file_and_the_first_ids(release, tmp_path, case):
    if case == "no supplement":
        (release / SUP).unlink()
        expect = [f"{SUP} (", "missing beside", GT]
    elif case == "no input":
        shutil.rmtree(release / INPUT)
        expect = [f"{INPUT}/ (the folder", "missing"]
    elif case == "no ground truth":
        (release / GT).unlink()
        expect = [f"{GT} (isic_id,malignant)", "missing"]
    elif case.startswith("label"):
        bad = _edit_truth(release, 4, case.split()[1])
        expect = [f"{GT}: column 'malignant' must be 1.0", f"{bad} (line 6: '{case.split()[1]}')"]
    elif case == "unlisted image":
        (release / INPUT / "ISIC_0000001.jpg").write_bytes((release / INPUT).glob("*.jpg").__next__().read_bytes())
        expect = [f"{INPUT}: 1 image(s) have no row in {GT}: ISIC_0000001"]
    else:
        bad = _edit_supplement(release, case.split()[1])
        expect = {"duplicate": [f"{SUP}: 1 duplicate id(s): '{bad}'"],
                  "foreign": [f"{SUP}: 1 id(s) are not in {GT}: {bad}"],
                  "lacks": [f"{SUP}: has no row for 1 id(s) of {GT}: {bad}"]}[case.split()[1]]
    r = cli("prepare", release, "--out", tmp_path / "data", "--size", "16", ok=False)
    assert r.exit_code == 2, r.output
    message = r.output.strip()
    assert message.count("\n") == 0 and message.startswith("error: "), message
    for part in expect:
        assert part in message, (part, message)
    assert not (tmp_path / "data").exists()


def test_ground_truth_ids_without_an_image_are_named_and_can_be_skipped(release, tmp_path):
    gone = _drop_image(release, 2)
    with pytest.raises(BadInputError, match=rf"{GT}: 2 of 40 image\(s\) missing: {gone[0]}, {gone[1]} \(looked for under"):
        prepare(read_source(release), tmp_path / "d", size=16, workers=1)
    assert not (tmp_path / "d").exists()
    prepare(read_source(release), tmp_path / "d", size=16, skip_bad=True, workers=1)
    assert Store.open(tmp_path / "d").meta["n"] == 38


# ---------------------------------------------------------------- label-derived columns


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A release of tiny crops prepared at 16 px and split (grouped by lesion where filled), a train run,
    a 2-fold cv, their ensemble and a tabular run fused with the cv."""
    root = tmp_path_factory.mktemp("permissive")
    release = write_isic2024_permissive(root / "release", n=160, n_positive=40, seed=1)
    data = root / "data"
    cli("prepare", release, "--out", data, "--size", "16", "--workers", "1")
    cli("split", data, "--val", "4:12", "--test", "4:12")
    return {"root": root, "release": release, "data": data}


def test_label_derived_columns_are_never_features(prepared, tmp_path):
    from lesionlab.data.splits import load_split
    from lesionlab.tabular import features as feat
    from lesionlab.tabular.column_guard import select_columns

    store = Store.open(prepared["data"])
    table = store.metadata()
    pool = load_split(store).positions(table, "train")
    t, y = table.iloc[pool].reset_index(drop=True), table["label"].astype(int).to_numpy()[pool]
    kinds = feat.column_kinds(t, t.columns)
    sel = select_columns(t, y, kinds, None)  # --features auto
    assert set(sel.columns) == {"attribution", "copyright_license"}
    for col in LABEL_DERIVED:
        assert "label" in sel.dropped[col], (col, sel.dropped[col])
    assert "presence gives the label away" in sel.dropped["lesion_id"]
    for col in LABEL_DERIVED[1:]:
        with pytest.raises(LeakError, match=f"--features {col}: refused, it is derived from the label"):
            select_columns(t, y, kinds, ["attribution", col])
    with pytest.raises(BadInputError, match="--features lesion_id: a group key, and in ISIC 2024 derived from the label"):
        select_columns(t, y, kinds, ["lesion_id"])
    # through the command line: refused before anything is written
    r = cli("tabular", "--data", prepared["data"], "--out", tmp_path / "t", "--features", "attribution,iddx_3", ok=False)
    assert r.exit_code == 2 and "--features iddx_3: refused, it is derived from the label" in r.output
    assert not (tmp_path / "t").exists()


# ---------------------------------------------------------------- the Kaggle submission file


@pytest.fixture(scope="module")
def runs(prepared):
    root, data = prepared["root"], prepared["data"]
    run, cv, ens, fused = root / "run", root / "cv", root / "ens", root / "fused"
    cli("train", "--data", data, "--out", run, *FAST_TRAIN)
    cli("cv", "--data", data, "--out", cv, "--folds", "2", *FAST_TRAIN)
    cli("ensemble", run, cv, "--out", ens, "--n-boot", "10")
    cli("tabular", "--data", data, "--out", fused, "--image", cv, "--folds", "2", *FAST_TAB)
    return {"train": run, "cv": cv, "ensemble": ens, "tabular fused": fused}


@pytest.fixture(scope="module")
def kaggle_test(prepared):
    """The competition's test layout for 30 crops of the release, the metadata in another order than the hdf5's."""
    truth = pd.read_csv(prepared["release"] / GT, dtype=str)
    ids = truth["isic_id"].sample(n=30, random_state=3).tolist()
    return write_kaggle_test(prepared["root"] / "kaggle-test", prepared["release"], ids)


@pytest.mark.parametrize("kind", ["train", "cv", "ensemble", "tabular fused"])
def test_submission_file_for_every_run_kind(runs, kaggle_test, tmp_path, kind):
    out = tmp_path / "submission.csv"
    r = cli("predict", runs[kind], kaggle_test, "--out", out, "--format", "kaggle", "--workers", "1")
    assert "submission (isic_id,target) of 30" in r.output
    sub = pd.read_csv(out, dtype={"isic_id": str})
    meta = pd.read_csv(kaggle_test / "test-metadata.csv", dtype=str)
    assert list(sub.columns) == ["isic_id", "target"]
    assert sub["isic_id"].tolist() == meta["isic_id"].tolist()  # one row per test image, in the metadata's order
    assert sub["target"].between(0, 1).all() and sub["target"].nunique() > 1
    # the same probabilities as predict's own output
    cli("predict", runs[kind], kaggle_test, "--out", tmp_path / "plain.csv", "--workers", "1")
    plain = pd.read_csv(tmp_path / "plain.csv", dtype={"id": str})
    assert plain["id"].tolist() == sub["isic_id"].tolist()
    assert np.allclose(plain["prob"], sub["target"], rtol=1e-5, atol=1e-7)


def test_submission_bad_inputs_write_nothing(runs, kaggle_test, prepared, tmp_path):
    run = runs["train"]
    # an hdf5 that lacks some of the metadata's ids
    broken = tmp_path / "broken"
    shutil.copytree(kaggle_test, broken)
    import h5py

    meta = pd.read_csv(broken / "test-metadata.csv", dtype=str)
    gone = meta["isic_id"].tolist()[2:4]
    with h5py.File(broken / "test-image.hdf5", "a") as f:
        for i in gone:
            del f[i]
    r = cli("predict", run, broken, "--out", tmp_path / "a.csv", "--format", "kaggle", ok=False)
    assert r.exit_code == 2
    assert f"test-metadata.csv: 2 of 30 image(s) missing: {gone[0]}, {gone[1]} (looked for in" in r.output
    assert "test-image.hdf5; a submission needs every test image" in r.output
    assert not (tmp_path / "a.csv").exists()
    r = cli("predict", run, broken, "--out", tmp_path / "a.csv", "--format", "kaggle", "--skip-bad", ok=False)
    assert r.exit_code == 2 and "a submission needs a row for every test image" in r.output
    # images that have no isic ids
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, src in enumerate(sorted((prepared["release"] / INPUT).glob("*.jpg"))[:3]):
        shutil.copyfile(src, folder / f"photo_{k}.jpg")
    r = cli("predict", run, folder, "--out", tmp_path / "b.csv", "--format", "kaggle", ok=False)
    assert r.exit_code == 2 and "3 of 3 image(s) have no ISIC id" in r.output and "photo_0" in r.output
    assert not (tmp_path / "b.csv").exists()
    # the release itself has ISIC ids: its submission covers every crop
    cli("predict", run, prepared["release"], "--out", tmp_path / "c.csv", "--format", "kaggle", "--workers", "1")
    assert len(pd.read_csv(tmp_path / "c.csv")) == 160
    # the competition's folder holds the train files too: the submission is of its test images
    both = tmp_path / "competition"
    shutil.copytree(kaggle_test, both)
    train = pd.read_csv(both / "test-metadata.csv", dtype=str).iloc[:5].assign(target="0")
    train.to_csv(both / "train-metadata.csv", index=False)
    shutil.copyfile(both / "test-image.hdf5", both / "train-image.hdf5")
    cli("predict", run, both, "--out", tmp_path / "d.csv", "--format", "kaggle", "--workers", "1")
    assert len(pd.read_csv(tmp_path / "d.csv")) == 30
    # a submission is never written over an existing file
    r = cli("predict", run, kaggle_test, "--out", tmp_path / "c.csv", "--format", "kaggle", ok=False)
    assert r.exit_code == 2 and "exists" in r.output
    assert json.loads((run / "run.json").read_text())["format"]["kind"] == "train"


# ---------------------------------------------------------------- the demo sample


def test_demo_sample_is_the_release_layout_with_its_attribution_and_license():
    from lesionlab.workflows.demo import sample_path

    folder = sample_path("isic2024-permissive")
    src = read_source(folder)
    assert src.format == "isic2024-permissive" and len(src.table) == 780 and src.table["label"].sum() == 139
    images = sorted((folder / INPUT).glob("*.jpg"))
    assert len(images) == 780
    sup = pd.read_csv(folder / SUP, dtype=str, keep_default_na=False)
    assert set(sup["copyright_license"]) <= {"CC-BY", "CC-0"}
    source, license_text = (folder / "SOURCE.md").read_text(), (folder / "LICENSE.md").read_text()
    for needed in ("ISIC Archive", "doi:10.1038/s41597-024-03743-w"):
        assert needed in source and needed in license_text
    for who in sup["attribution"].unique():
        assert who in license_text
    assert "https://creativecommons.org/licenses/by/4.0/" in license_text


def test_every_file_of_the_shipped_samples_is_package_data():
    """Installs from pyproject carry the samples (their images, attribution and license) with the package."""
    from pathlib import Path, PurePosixPath

    from lesionlab.workflows.demo import demo_files

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lesionlab"]
    files = [p.relative_to(demo_files().parent).as_posix() for p in demo_files().rglob("*") if p.is_file()]
    unpackaged = [f for f in files if not any(PurePosixPath(f).match(pat) for pat in patterns)]  # '*' stays in a folder
    assert not unpackaged, unpackaged[:5]
