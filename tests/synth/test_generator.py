"""Synthetic images: generator training and resume, sampling and import, quality and memorisation
measures, the leakage guard, and the synthetic experiment's training draw."""
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import cli
from lesionlab.data.copy_guard import find_copies
from lesionlab.data.splits import load_split
from lesionlab.data.store import Store
from lesionlab.errors import ExistsError, NotEnoughDataError
from lesionlab.synth.copy_watch import watch_ids
from lesionlab.synth.generator import train_generator

SMALL = ["--epochs", "1", "--batch-size", "16", "--n-malignant", "20", "--bootstrap", "20", "--eval-batch-size", "64"]


@pytest.fixture(scope="module")
def generator(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "g"
    cli("synth", "train", small_data, "--out", out, "--kind", "gan", "--size", "32", "--steps", "6", "--sample-every", "3",
        "--checkpoint-every", "3")
    return out


@pytest.mark.slow
def test_generator_learns_only_from_the_train_pool(generator, small_data):
    info = json.loads((generator / "generator.json").read_text())
    assert info["steps"] == 6 and info["kind"] == "gan" and info["n_real"] > 16
    store = Store.open(small_data)
    split = load_split(store)
    used = set(pd.read_csv(generator / "real_ids.csv", dtype=str)["id"])
    assert not used & (set(split.ids("val")) | set(split.ids("test")))
    labels = dict(zip(store.table["id"], store.table["label"]))
    assert {labels[i] for i in used} == {1} and len(used) == info["n_real"]
    assert (generator / "samples" / "step-000003.png").exists() and (generator / "samples" / "step-000006.png").exists()


def test_interrupted_training_resumes(small_data, tmp_path):
    out = tmp_path / "g"
    first = train_generator(small_data, out, kind="gan", size=32, steps=8, checkpoint_every=2, time_budget=1e-9)
    assert first["stopped_by_time_budget"] and first["steps"] == 2
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # tensors and plain values only
    assert state["step"] == 2
    second = train_generator(small_data, out, kind="gan", size=32, steps=5, checkpoint_every=2)
    assert second["steps"] == 5 and not second["stopped_by_time_budget"]
    with pytest.raises(ExistsError, match="already holds a generator trained for 5 steps"):
        train_generator(small_data, out, kind="gan", size=32, steps=5)
    with pytest.raises(ExistsError, match="another kind"):
        train_generator(small_data, out, kind="gan", size=64, steps=9)


@pytest.mark.parametrize("command", ["sample", "check", "train"])
def test_generator_checkpoint_that_would_run_code_is_refused(generator, small_data, tmp_path, command):
    """A generator folder from someone else: its checkpoint.pt, unpickled, would run a command.
    sample, check and a resumed train all refuse it by name, and the command never runs."""
    from test_fileio import plant_hostile_checkpoint

    gen, marker = tmp_path / "g", tmp_path / "ran"
    shutil.copytree(generator, gen)
    plant_hostile_checkpoint(gen / "checkpoint.pt", marker)
    args = {"sample": ["sample", gen, "--n", "2", "--out", tmp_path / "s"],
            "check": ["check", gen, "--data", small_data, "--features", tmp_path / "no-run"],
            "train": ["train", small_data, "--out", gen, "--kind", "gan", "--size", "32", "--steps", "9"]}[command]
    r = cli("synth", *args, ok=False)
    assert r.exit_code == 2 and "checkpoint.pt: holds Python objects that lesionlab does not load" in r.output, r.output
    assert "may be unsafe" in r.output and not marker.exists()


def test_tiny_class_is_refused(small_data, tmp_path):
    data = tmp_path / "tiny"
    shutil.copytree(small_data, data)
    rows = pd.read_csv(data / "rows.csv", dtype=str, keep_default_na=False)
    split = json.loads((data / "split.json").read_text())
    keep = set(split["assign"]["val"] + split["assign"]["test"])
    pool_mal = rows[(rows["label"] == "1") & ~rows["id"].isin(keep)].index
    rows.loc[pool_mal[5:], "label"] = "0"  # 5 malignant left in the pool
    rows.to_csv(data / "rows.csv", index=False)
    with pytest.raises(NotEnoughDataError, match="the train pool has 5 malignant image"):
        train_generator(data, tmp_path / "g", size=32, steps=1)


@pytest.mark.slow
def test_ddpm_kind_trains_and_samples(small_data, tmp_path):
    cli("synth", "train", small_data, "--out", tmp_path / "d", "--kind", "ddpm", "--size", "32", "--steps", "2",
        "--sample-every", "100", "--sample-steps", "2", "--batch-size", "4")
    cli("synth", "sample", tmp_path / "d", "--n", "3", "--out", tmp_path / "s")
    assert len(list((tmp_path / "s" / "images").iterdir())) == 3


def test_sample_prepare_and_train_with_synthetic(generator, small_data, tmp_path):
    cli("synth", "sample", generator, "--n", "40", "--out", tmp_path / "syn")
    manifest = pd.read_csv(tmp_path / "syn" / "manifest.csv")
    assert (manifest["synthetic"] == 1).all() and (manifest["label"] == 1).all()
    assert manifest["generator_step"].eq(6).all() and manifest["id"].str.startswith("syn_").all()
    cli("prepare", tmp_path / "syn", "--out", tmp_path / "syndata", "--size", "32")
    cli("train", "--data", small_data, "--out", tmp_path / "run", *SMALL, "--ratio", "1:2",
        "--synthetic", tmp_path / "syndata", "--synthetic-n", "30")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    # the ratio counts real + synthetic malignant: (20 + 30) x 2 benign
    assert info["draw"]["malignant"] == 50 and info["draw"]["benign"] == 100 and info["draw"]["synthetic"] == 30
    assert info["synthetic"]["n"] == 30 and info["synthetic"]["guard"]["copies"] == 0
    drawn = pd.read_csv(tmp_path / "run" / "train_draw.csv")
    assert drawn["synthetic"].sum() == 30 and drawn.loc[drawn["synthetic"] == 1, "id"].str.startswith("syn_").all()
    preds = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert not preds["id"].str.startswith("syn_").any()  # never in validation or test
    r = cli("train", "--data", small_data, "--out", tmp_path / "r2", *SMALL, "--synthetic", tmp_path / "syndata",
            "--synthetic-n", "400", ok=False)
    assert "holds 40 synthetic images" in r.output


def test_synthetic_sources_that_are_not_synthetic_or_copy_evaluation_images(small_data, tmp_path):
    store = Store.open(small_data)
    split = load_split(store)
    val_ids = split.ids("val")[:3]
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    rows = []
    for k, vid in enumerate(val_ids):  # validation images, re-encoded as JPEG: copies
        pos = np.flatnonzero(store.table["id"] == vid)
        buf = io.BytesIO()
        Image.fromarray(store.pixels(pos)[0]).save(buf, format="JPEG", quality=90)
        (raw / "images" / f"c{k}.jpg").write_bytes(buf.getvalue())
        rows.append({"path": f"images/c{k}.jpg", "label": 1, "id": f"copy{k}", "synthetic": 1})
    pd.DataFrame(rows).to_csv(raw / "manifest.csv", index=False)
    cli("prepare", raw, "--out", tmp_path / "copies", "--size", "32")
    r = cli("train", "--data", small_data, "--out", tmp_path / "r", *SMALL, "--synthetic", tmp_path / "copies", ok=False)
    assert r.exit_code == 2 and "copies of validation or test images" in r.output and f"copy0 ~ {val_ids[0]}" in r.output
    # same ids as the evaluation images
    pd.DataFrame([{**row, "id": vid} for row, vid in zip(rows, val_ids)]).to_csv(raw / "manifest.csv", index=False)
    cli("prepare", raw, "--out", tmp_path / "same_ids", "--size", "32")
    r = cli("train", "--data", small_data, "--out", tmp_path / "r", *SMALL, "--synthetic", tmp_path / "same_ids", ok=False)
    assert "are validation or test images" in r.output
    # a real data set passed off as synthetic
    r = cli("train", "--data", small_data, "--out", tmp_path / "r", *SMALL, "--synthetic", small_data, ok=False)
    assert "not a synthetic data set" in r.output
    assert not (tmp_path / "r").exists()


def test_guard_does_not_flag_distinct_lesions(small_data):
    store = Store.open(small_data)
    split = load_split(store)
    t = store.table
    evaluation = store.pixels(np.r_[split.positions(t, "val"), split.positions(t, "test")])
    pool = store.pixels(split.positions(t, "train"))
    assert find_copies(pool, evaluation) == []


def test_import_external_folder(tmp_path, generator):
    ext = tmp_path / "stylegan"
    ext.mkdir()
    for k in range(4):
        Image.fromarray(np.full((40, 40, 3), 40 * k, np.uint8)).save(ext / f"seed{k:04d}.png")
    cli("synth", "import", ext, "--out", tmp_path / "imp", "--generator", "stylegan2-ada")
    m = pd.read_csv(tmp_path / "imp" / "manifest.csv")
    assert len(m) == 4 and (m["synthetic"] == 1).all() and (m["generator"] == "stylegan2-ada").all()
    (ext / "broken.png").write_bytes(b"nope")
    r = cli("synth", "import", ext, "--out", tmp_path / "imp2", ok=False)
    assert r.exit_code == 2 and "broken.png" in r.output and not (tmp_path / "imp2").exists()


@pytest.mark.slow
def test_check_writes_every_measure(generator, small_data, tmp_path, sample_manifest):
    runs = tmp_path / "clf"
    cli("train", "--data", small_data, "--out", runs, *SMALL, "--model", "upgraded_cnn")
    cli("synth", "check", generator, "--data", small_data, "--features", runs, "--n", "50", "--out", tmp_path / "chk")
    r = json.loads((tmp_path / "chk" / "check.json").read_text())
    assert r["fid"]["synthetic_vs_real"] > r["fid"]["real_half_vs_real_half"] >= 0
    assert set(r["manifold_k5"]) == {"precision", "recall", "density", "coverage"}
    assert 0 <= r["memorisation"]["near_copies_pixel"] <= 1 and "UpgradedCNN" in r["feature_extractor"]
    for f in ("samples_vs_real.png", "closest_pairs.png", "nn_pixels.png", "nn_features.png"):
        assert (tmp_path / "chk" / "figures" / f).stat().st_size > 500
    assert "data:image/png;base64," in (tmp_path / "chk" / "check.html").read_text()
    copying = r["memorisation"]["data_copying"]
    assert copying["pixel"]["n_generated"] == 50
    # the control: the images the copy watch chose the stop on (real, never learned), against the same new images
    control = copying["control"]
    assert control["n"] == len(watch_ids(generator)) == control["pixel"]["n_generated"]
    assert control["pixel"]["n_held_out"] == copying["pixel"]["n_held_out"] and "copy watch" in control["images"]
    assert "Control, real images the generator never learned" in (tmp_path / "chk" / "check.md").read_text()


def test_the_control_of_an_unwatched_generator_splits_the_new_images_by_whole_groups(small_data, tmp_path):
    from lesionlab.synth.check import real_control

    images = np.arange(12)[:, None] * np.ones((12, 4))
    groups = np.array(list("aabbbcddeeff"))
    control, held, what = real_control(tmp_path, small_data, 32, images, groups)
    assert sorted(np.concatenate([control, images[held]])[:, 0]) == list(range(12))  # every new image on one side
    assert not set(groups[control[:, 0].astype(int)]) & set(groups[held])  # no group on both sides
    assert set(groups[held]) == set(groups[images[held][:, 0].astype(int)]) and "half" in what


@pytest.mark.slow
def test_check_says_when_too_few_new_real_images_for_the_data_copying_test(generator, small_data, tmp_path,
                                                                          monkeypatch):
    from lesionlab.synth import check

    monkeypatch.setattr(check, "MIN_UNSEEN", 10_000)
    cli("synth", "check", generator, "--data", small_data, "--features", "random", "--n", "20", "--out", tmp_path / "c")
    r = json.loads((tmp_path / "c" / "check.json").read_text())
    assert r["memorisation"]["data_copying"] is None
    assert f"not run; it needs 10000 real malignant images the generator never saw, the data set holds " \
           f"{r['memorisation']['n_unseen_real']}" in (tmp_path / "c" / "check.md").read_text()
