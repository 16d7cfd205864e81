"""Models that transfer: offline ImageNet weights (a registered package, pinned and renamed), each
backbone's preprocessing from training to predict/explain/export, the transfer levers, an extra
data set in the training draw only, fine-tuning from a finished run, and the measured runtime choice."""
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import LITE0_FILE_SHA, cli, copy_subset, lite0_installed, subset
from conftest import RUN_FLAGS as FLAGS  # the tiny runs' flags, one list for every file
from lesionlab.config import build_config
from lesionlab.data.sources import read_source
from lesionlab.data.store import Store, prepare
from lesionlab.errors import LeakError
from lesionlab.fileio import exclusive
from lesionlab.metrics import compute_metrics
from lesionlab.models import create_model
from lesionlab.runs import Run, is_complete_run, load_predictor
from lesionlab.workflows.train import train_process
from processes import start_lesionlab

TRAIN = ["--epochs", "3", "--batch-size", "16", "--n-malignant", "16", "--bootstrap", "200", "--num-threads", "1"]
SMALL = ["--epochs", "2", "--batch-size", "16", "--n-malignant", "20", "--bootstrap", "100", "--eval-batch-size", "64"]


# ---------------------------------------------------------------- preprocessing, train -> predict/export


@pytest.fixture(scope="module")
def lite0_run(small_data, tmp_path_factory):
    lite0_installed()
    out = tmp_path_factory.mktemp("lite0") / "run"
    r = cli("train", "--data", small_data, "--out", out, "--model", "tf_efficientnet_lite0", "--pretrained",
            "--input-size", 48, "--epochs", 1, "--n-malignant", 10, "--ratio", "1:1", "--batch-size", 10,
            "--bootstrap", 0, "--precision", "32", "--channels-last", "false", "--threshold", "val-f1")
    assert "Test Loss" in r.output
    return out


def test_the_backbones_preprocessing_goes_from_train_to_predict_and_export(lite0_run, small_data, tmp_path):
    info = Run.load(lite0_run).info
    assert info["preprocessing"]["mean"] == info["preprocessing"]["std"] == [0.5, 0.5, 0.5]
    assert info["preprocessing"]["interpolation"] == "bicubic" and info["preprocessing"]["input_size"] == 48
    assert info["weights"]["source"]["sha256"] == LITE0_FILE_SHA
    ckpt = torch.load(lite0_run / "checkpoint.pt", weights_only=True)
    assert (ckpt["mean"], ckpt["std"], ckpt["interpolation"], ckpt["input_size"], ckpt["image_size"]) == \
        ([0.5] * 3, [0.5] * 3, "bicubic", 48, 32)
    # predict scores the test images as the run did (same resize and normalisation)
    store = Store.open(small_data)
    preds = pd.read_csv(lite0_run / "predictions.csv", dtype={"id": str})
    test = preds[preds["split"] == "test"]
    pos = store.table.reset_index(drop=True).reset_index().set_index("id").loc[test["id"], "index"].to_numpy()
    predictor = load_predictor(lite0_run, "cpu")
    assert predictor.input_size == 48 and predictor.interpolation == "bicubic" and predictor.mean == (0.5,) * 3
    got = predictor.probabilities(store.pixels(pos))
    np.testing.assert_allclose(got, test["prob"].to_numpy(), atol=2e-6)  # predictions.csv keeps 6 digits
    # with ImageNet's statistics instead the scores would differ: the recorded preprocessing is what matters
    wrong = dataclasses.replace(predictor, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert np.abs(wrong.probabilities(store.pixels(pos)) - got).max() > 1e-3
    # the exported graph enlarges and normalises inside it; its metadata says so
    cli("export", lite0_run, "--format", "onnx", "--out", tmp_path / "m.onnx")
    from lesionlab.workflows.onnx_predictor import load_onnx_predictor

    onnx = load_onnx_predictor(tmp_path / "m.onnx")
    assert onnx.meta["input_size"] == 48 and onnx.meta["interpolation"] == "bicubic" and onnx.meta["mean"] == [0.5] * 3
    np.testing.assert_allclose(onnx.probabilities(store.pixels(pos)), got, atol=1e-4)
    # explain: maps computed on the enlarged input come back at the images' size
    from lesionlab.workflows.explain import predictor_cams

    maps, layers = predictor_cams(predictor, store.pixels(pos[:2]))
    assert maps.shape == (2, 32, 32) and layers == ["blocks.6"]


def test_input_size_smaller_than_the_data_set_is_refused(small_data, tmp_path):
    r = cli("train", "--data", small_data, "--out", tmp_path / "r", "--input-size", 24, "--epochs", 1, ok=False)
    assert r.exit_code == 2 and "--input-size 24: smaller than the data set's 32 px images" in r.output


# ---------------------------------------------------------------- transfer levers


def test_layer_decay_gives_each_layer_group_its_rate():
    from lesionlab.engine.trainer import TrainOptions, _param_groups

    model = create_model("tf_efficientnet_lite0")
    opts = TrainOptions.from_config(build_config({"epochs": 1, "batch_size": 2, "lr": 1e-3, "encoder_lr_mult": 0.5,
                                                  "layer_decay": 0.8}), None, head="classifier")
    groups, encoder = _param_groups(model, opts)
    # timm's groups of lite0: stem 0, its 16 blocks 1-16 (the last with conv_head and bn2), classifier 17 (the head)
    assert len(groups) == 18 and groups[-1]["lr"] == 1e-3 and len(groups[-1]["params"]) == 2
    assert groups[0]["params"][0] is model.conv_stem.weight and groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * 0.8 ** 17)
    assert groups[-2]["params"][-1] is model.bn2.bias and groups[-2]["lr"] == pytest.approx(1e-3 * 0.5 * 0.8)
    assert len(encoder) == sum(len(g["params"]) for g in groups[:-1]) == len(list(model.parameters())) - 2


def test_frozen_batchnorm_keeps_the_loaded_statistics_and_weights(offline, small_data, tmp_path):
    lite0_installed()
    cfg = build_config({"data": str(small_data), "model": "tf_efficientnet_lite0", "pretrained": True,
                        "batchnorm": "frozen", "epochs": 1, "n_malignant": 10, "ratio": "1:1", "batch_size": 10,
                        "bootstrap": 0, "lr": 1e-2, "precision": "32", "channels_last": "false"})
    train_process(cfg, tmp_path / "run")
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state_dict"]
    start = create_model("tf_efficientnet_lite0", pretrained=True).state_dict()
    bn = [k for k in start if ".bn" in k or k.startswith("bn")]
    assert len(bn) > 100
    for k in bn:
        assert torch.equal(trained[k], start[k]), k
    assert not torch.equal(trained["conv_stem.weight"], start["conv_stem.weight"])


def test_a_head_only_warm_up_holds_a_timm_body(offline, small_data, tmp_path):
    lite0_installed()
    cfg = build_config({"data": str(small_data), "model": "tf_efficientnet_lite0", "pretrained": True,
                        "linear_probe_epochs": 1, "batchnorm": "frozen", "epochs": 1, "n_malignant": 10, "ratio": "1:1",
                        "batch_size": 10, "bootstrap": 0, "lr": 1e-2, "precision": "32", "channels_last": "false"})
    train_process(cfg, tmp_path / "run")
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state_dict"]
    start = create_model("tf_efficientnet_lite0", pretrained=True).state_dict()
    for k, v in start.items():
        if k.startswith("classifier."):
            assert trained[k].any(), k  # the head learned (it started at zero)
        else:
            assert torch.equal(trained[k], v), k  # the body, statistics included (frozen), as loaded


# ---------------------------------------------------------------- an extra data set


@pytest.fixture(scope="module")
def extra_data(tmp_path_factory, sample_manifest):
    """30 malignant + 60 benign images of lesions that are not in small_data, prepared at 32 px."""
    used = subset(sample_manifest, 60, 200)
    rest = sample_manifest[~sample_manifest["lesion_id"].isin(set(used["lesion_id"]))]
    root = tmp_path_factory.mktemp("extra")
    data = root / "data"
    prepare(read_source(copy_subset(subset(rest, 30, 60, seed=1), root / "raw")), data, size=32, workers=1)
    return data


def test_the_extra_data_set_trains_but_is_never_scored(small_data, extra_data, tmp_path):
    out = tmp_path / "cv"
    cli("cv", "--data", small_data, "--out", out, "--folds", 2, "--extra-data", extra_data, "--extra-ratio", "1:1",
        "--extra-n-malignant", 20, "--epochs", 1, "--n-malignant", 5, "--ratio", "1:1", "--bootstrap", 0,
        "--sampler", "redraw")
    main_ids = set(Store.open(small_data).table["id"].astype(str))
    extra_ids = set(Store.open(extra_data).table["id"].astype(str))
    assert not main_ids & extra_ids
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    preds = pd.read_csv(out / "predictions.csv", dtype={"id": str})
    assert set(oof["id"]) <= main_ids and set(preds["id"]) <= main_ids  # OOF, val and test: the run's own images only
    for fold in ("0", "1"):
        draw = pd.read_csv(out / "folds" / fold / "train_draw.csv", dtype={"id": str})
        extra = draw[draw["extra"] == 1]
        assert set(extra["id"]) <= extra_ids and (extra["label"].sum(), (extra["label"] == 0).sum()) == (20, 20)
        assert set(draw.loc[draw["extra"] == 0, "id"]) <= main_ids
        fold_preds = pd.read_csv(out / "folds" / fold / "predictions.csv", dtype={"id": str})
        assert not set(fold_preds["id"]) & extra_ids
        info = json.loads((out / "folds" / fold / "run.json").read_text())
        assert info["draw"]["extra"] == 40 and info["extra_data"]["guard"]["copies"] == 0


def test_redraw_keeps_the_extra_images_in_every_epoch():
    from lesionlab.data.sampling import EpochSampler

    labels = np.r_[np.ones(10), np.zeros(90), np.ones(5), np.zeros(5)].astype(int)  # 100 real, then 10 extra
    draw = np.r_[np.arange(10), np.arange(10, 30), np.arange(100, 110)]
    sampler = EpochSampler("redraw", labels, draw, np.arange(100), seed=0, fixed=np.arange(100, 110))
    for epoch in range(3):
        order = sampler.full_epoch(epoch)
        assert len(order) == len(draw) and set(range(100, 110)) <= set(order)       # every extra image, every epoch
        assert set(order[order < 100][labels[order[order < 100]] == 1]) == set(range(10))
        assert (labels[order[order < 100]] == 0).sum() == 20                         # fresh benign, as many as drawn


def test_an_extra_data_set_of_another_size_is_refused(small_data, tmp_path, sample_manifest):
    other = tmp_path / "other"
    prepare(read_source(copy_subset(subset(sample_manifest, 5, 5, seed=3), tmp_path / "raw")), other, size=24, workers=1)
    r = cli("train", "--data", small_data, "--out", tmp_path / "r", "--extra-data", other, "--epochs", 1, ok=False)
    assert r.exit_code == 2 and f"--extra-data {other}: prepared at 24 px but the run's data set is at 32 px" in r.output


def _extra_with(rows: pd.DataFrame, dest: Path, rename: bool, sample: Path) -> Path:
    """A data set of `rows`' images (re-encoded as JPEG quality 80, and under new ids when `rename`)."""
    from PIL import Image

    (dest / "images").mkdir(parents=True)
    rows = rows.copy()
    for i, p in enumerate(rows["path"]):
        new = f"images/copy_{i}.jpg" if rename else p
        Image.open(sample / p).convert("RGB").save(dest / new, quality=80)
        rows.iloc[i, rows.columns.get_loc("path")] = new
    if rename:
        rows["lesion_id"] = [f"OTHER_{i}" for i in range(len(rows))]
    rows.to_csv(dest / "manifest.csv", index=False)
    prepare(read_source(dest / "manifest.csv"), dest / "data", size=32, workers=1)
    return dest / "data"


def test_an_extra_data_set_holding_copies_of_val_or_test_images_is_refused(small_data, extra_data, tmp_path,
                                                                            sample_manifest):
    from conftest import SAMPLE
    from lesionlab.data.splits import load_split

    store = Store.open(small_data)
    test_ids = load_split(store).ids("test")[:3]
    rows = sample_manifest[sample_manifest["source_id"].isin(test_ids)]
    benign = sample_manifest[~sample_manifest["lesion_id"].isin(set(subset(sample_manifest, 60, 200)["lesion_id"]))]
    rows = pd.concat([rows, benign[benign["label"] == "1"].head(4), benign[benign["label"] == "0"].head(4)])
    # the same images under new names and lesion ids, re-encoded: found by content
    copies = _extra_with(rows, tmp_path / "renamed", True, SAMPLE)
    cfg = build_config({"data": str(small_data), "extra_data": str(copies), "epochs": 1, "bootstrap": 0, "n_malignant": 10})
    with pytest.raises(LeakError, match=r"--extra-data .*renamed/data: 3 extra image\(s\) are copies of this run's "
                       r"validation, test or out-of-fold images: .*copy_0 ~ " + test_ids[0]):
        train_process(cfg, tmp_path / "r1")
    # asked to, the run leaves the three copies out of its draw (no other image of their class is left to replace
    # them) and names them in run.json; its training draw holds none of them
    train_process(cfg.model_copy(update={"extra_drop_copies": True}), tmp_path / "r3")
    info = json.loads((tmp_path / "r3" / "run.json").read_text())
    guard = info["extra_data"]["guard"]
    assert guard["copies"] == 3 and guard["checked"] == 11 and info["draw"]["extra"] == 8
    assert sorted(d.split(" ~ ")[1].split(" ")[0] for d in guard["dropped"]) == sorted(test_ids)
    drawn = pd.read_csv(tmp_path / "r3" / "train_draw.csv", dtype={"id": str})
    assert not set(drawn["id"]) & {d.split(" ~ ")[0] for d in guard["dropped"]}
    # where the data set holds other images of the class, each copy is replaced by one of them, checked in turn
    from lesionlab.data.copy_guard import index_references
    from lesionlab.data.extra import _checked_draw

    extra = Store.open(copies)
    labels = extra.table["label"].to_numpy()
    copy_rows = set(np.flatnonzero(extra.table["id"].isin([d.split(" ~ ")[0] for d in guard["dropped"]])).tolist())
    others = [r for r in range(len(labels)) if r not in copy_rows]
    draw = np.array(sorted(copy_rows) + [next(r for r in others if labels[r] == c) for c in (0, 1)])
    refs = index_references(store.pixels(load_split(store).positions(store.table, "test")))
    kept, found = _checked_draw(extra, draw, refs, 0, drop_copies=True)
    assert {r for r, _, _ in found} == copy_rows and not set(kept.tolist()) & copy_rows
    assert set(draw.tolist()) - copy_rows <= set(kept.tolist()) and sorted(labels[kept]) == sorted(labels[draw])
    # under their own ids: refused by id before any image is read, with or without dropping copies
    same = _extra_with(rows, tmp_path / "same", False, SAMPLE)
    with pytest.raises(LeakError, match=r"3 of its image ids are among the images this run evaluates on"):
        train_process(cfg.model_copy(update={"extra_data": str(same), "extra_drop_copies": True}), tmp_path / "r2")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


# ---------------------------------------------------------------- the two-step way: --pretrained RUN_DIR


def test_fine_tuning_from_a_finished_run(small_data, extra_data, tmp_path):
    from lesionlab.data.splits import make_split, save_split, split_path

    # step 1 trains on the other data set (it needs its own split)
    save_split(make_split(Store.open(extra_data), (5, 10), (5, 10), seed=0), split_path(extra_data))
    first = tmp_path / "first"
    cli("train", "--data", extra_data, "--out", first, "--model", "upgraded_cnn", "--epochs", 1, "--n-malignant", 10,
        "--bootstrap", 0)
    source = torch.load(first / "checkpoint.pt", weights_only=True)["state_dict"]
    # step 2 fine-tunes on this data set at lr 1e-12: the weights kept are where it started (BN statistics aside)
    for head in ("keep", "fresh"):
        cfg = build_config({"data": str(small_data), "model": "upgraded_cnn", "pretrained": str(first),
                            "pretrained_head": head, "epochs": 1, "n_malignant": 10, "bootstrap": 0, "lr": 1e-12})
        info = train_process(cfg, tmp_path / f"second-{head}")
        got = torch.load(tmp_path / f"second-{head}" / "checkpoint.pt", weights_only=True)["state_dict"]
        assert info["weights"]["kind"] == "run" and info["weights"]["source"]["head"] == head
        assert info["weights"]["leak_check"]["by"] == "id and content"
        for k in ("features.0.weight", "classifier.2.weight"):
            same = torch.allclose(got[k], source[k], atol=1e-9)
            assert same if (head == "keep" or not k.startswith("classifier")) else not same, (head, k)
    # a run of the same data set whose draw holds this cv's out-of-fold images is refused
    base = tmp_path / "base"
    cli("train", "--data", small_data, "--out", base, "--model", "upgraded_cnn", "--epochs", 1, "--n-malignant", 10,
        "--bootstrap", 0)
    r = cli("cv", "--data", small_data, "--out", tmp_path / "cv", "--folds", 2, "--model", "upgraded_cnn",
            "--pretrained", base, "--epochs", 1, "--n-malignant", 5, "--ratio", "1:1", ok=False)
    assert r.exit_code == 2 and "of the images this run evaluates on were in that run's training draw" in r.output
    r = cli("train", "--data", small_data, "--out", tmp_path / "x", "--model", "resnet18", "--pretrained", first,
            "--epochs", 1, "--n-malignant", 10, ok=False)
    assert "a run of model 'upgraded_cnn' but this run's model is 'resnet18'" in r.output


# ---------------------------------------------------------------- SSL continued from ImageNet weights


def test_continued_pretraining_keeps_the_backbones_preprocessing(offline, small_data, tmp_path):
    lite0_installed()
    enc = tmp_path / "enc"
    cli("pretrain", small_data, "--out", enc, "--model", "tf_efficientnet_lite0", "--pretrained", "--epochs", 1,
        "--batch-size", 32, "--method", "simclr", "--precision", "32")
    info = Run.load(enc).info
    assert info["weights"]["source"]["sha256"] == LITE0_FILE_SHA and info["preprocessing"]["mean"] == [0.5] * 3
    stored = torch.load(enc / "encoder.pt", weights_only=True)
    assert stored["mean"] == stored["std"] == [0.5] * 3 and stored["interpolation"] == "bicubic"
    # train --pretrained ENC_DIR starts from it with the same preprocessing
    from lesionlab.runs.encoder_run import load_encoder
    from lesionlab.workflows.train import Start, _build_model

    cfg = build_config({"model": "tf_efficientnet_lite0", "pretrained": str(enc)})
    model, pre, weights = _build_model(cfg, Start("encoder", encoder=load_encoder(enc)), 32, 32)
    assert pre.mean == pre.std == (0.5,) * 3 and pre.interpolation == "bicubic" and weights["kind"] == "encoder"
    assert torch.equal(model.conv_stem.weight, stored["state_dict"]["conv_stem.weight"]) and not model.classifier.weight.any()


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


def test_train_refused_while_another_process_writes_the_run(small_data, tmp_path):
    out = tmp_path / "run"
    with exclusive(out):  # as another process's train would hold it
        r = cli("train", "--data", small_data, "--out", out, "--epochs", "1", "--n-malignant", "10", ok=False)
    assert r.exit_code == 2 and f"{out}: another lesionlab process is writing this folder" in r.output, r.output
    assert not out.exists() and not list(tmp_path.glob(".run.partial*"))


@pytest.mark.slow
def test_two_trains_into_one_folder_publish_one_whole_run(small_data, tmp_path):
    """Started together with different seeds: one publishes, the other is refused with a clear error,
    and the run is one process's alone (before: a shared staging folder, removed and re-created by
    each, could publish a mix of both runs' files, or crash the second at publication)."""
    out = tmp_path / "run"
    procs = {seed: start_lesionlab("train", "--data", small_data, "--out", out, *TRAIN, "--seed", seed) for seed in (0, 1)}
    done = {seed: (p.wait(timeout=300), *p.communicate()) for seed, p in procs.items()}
    codes = sorted(code for code, _, _ in done.values())
    assert codes == [0, 2], {s: (c, err[-1500:]) for s, (c, _, err) in done.items()}
    winner = next(s for s, (code, _, _) in done.items() if code == 0)
    loser_err = done[1 - winner][2]
    assert (f"{out}: another lesionlab process is writing this folder" in loser_err
            or f"{out}: already holds a run" in loser_err), loser_err[-1500:]  # if it came after the publication
    assert "Traceback" not in loser_err
    assert is_complete_run(out) and not list(tmp_path.glob(".run.partial*"))
    config = (out / "config.yaml").read_text()
    assert f"seed: {winner}\n" in config
    info = json.loads((out / "run.json").read_text())
    assert info["epochs_run"] == len(pd.read_csv(out / "history.csv")) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(out / "predictions.csv")
    for side in ("val", "test"):
        p = preds[preds["split"] == side]
        again = compute_metrics(p["label"].to_numpy(), p["prob"].to_numpy(), metrics[side]["threshold"])
        for k in ("accuracy", "f1", "roc_auc", "average_precision", "pauc_80"):
            assert again[k] == pytest.approx(metrics[side][k], abs=1e-4), (side, k)


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
