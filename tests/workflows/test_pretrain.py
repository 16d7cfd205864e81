"""Self-supervised pretraining (lesionlab pretrain) and `train --pretrained ENC_DIR`."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import RUN_FLAGS as FLAGS  # the tiny runs' flags, one list for every file
from conftest import cli, undeclared_record_keys
from lesionlab.config import build_config, build_pretrain_config
from lesionlab.data.splits import load_split
from lesionlab.data.store import Store
from lesionlab.engine.runtime import Runtime, resolve_runtime
from lesionlab.engine.ssl import METHODS, SSLOptions, SSLTrainer, embed, knn_scores
from lesionlab.errors import BadInputError, LeakError
from lesionlab.fileio import load_checkpoint
from lesionlab.models import create_model
from lesionlab.models.encoder import encoder_state, head_name, is_head_key, load_encoder_state
from lesionlab.runs import Run
from lesionlab.runs.encoder_run import EncoderWeights, check_encoder_fits, load_encoder
from lesionlab.workflows.pretrain import pretrain, state_dir
from lesionlab.workflows.train import train_process


def _cfg(data, **kw):
    values = {"data": str(data), "epochs": 2, "batch_size": 16, "inner_val": 0.3, "local_views": 1,
              "num_threads": 2, **kw}
    return build_pretrain_config(values)


@pytest.fixture(scope="module")
def encoder_dir(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "enc"
    pretrain(_cfg(small_data), out)
    return out


# ---------------------------------------------------------------- the methods


@pytest.mark.parametrize("method", METHODS)
def test_a_few_steps_of_each_method_lower_a_finite_loss_on_a_fixed_batch(method, small_data):
    store = Store.open(small_data)
    batch = torch.from_numpy(store.pixels(np.arange(12)))
    torch.manual_seed(0)
    rt = resolve_runtime("cpu", "32", "false", False, 2)
    trainer = SSLTrainer(create_model("upgraded_cnn", image_size=32), 32,
                         SSLOptions(method, epochs=1, batch_size=12, lr=2e-3, warmup_epochs=0, local_views=1), rt, 10)
    losses = []
    for _ in range(10):
        trainer.views.set_epoch(0)  # the same views at every step: a fixed batch
        losses.append(trainer.train_step(batch, 0))
    assert all(np.isfinite(losses)), losses
    assert np.mean(losses[-3:]) < losses[0], losses


def test_encoder_is_the_model_minus_its_head():
    for name, head in (("upgraded_cnn", "classifier.2"), ("simple_cnn", "fc.2"), ("resnet18", "fc")):
        model = create_model(name, image_size=32 if name != "simple_cnn" else 128)
        assert head_name(model) == head
        state = encoder_state(model)
        assert state and not any(is_head_key(k, head) for k in state)
        assert set(model.state_dict()) - set(state) == {k for k in model.state_dict() if is_head_key(k, head)}


def test_knn_scores_rank_the_neighbours_class():
    bank = np.eye(4, dtype=np.float32)[[0, 0, 1, 1]]
    y = np.array([1, 1, 0, 0])
    s = knn_scores(bank, y, np.eye(4, dtype=np.float32)[[0, 1]], k=2)
    assert s[0] > 0.99 and s[1] < 0.01


# ---------------------------------------------------------------- the command


def test_pretrain_writes_an_encoder_folder_from_the_train_pool_only(encoder_dir, small_data):
    run = Run.load(encoder_dir)
    assert run.kind == "encoder" and run.info["method"] == "simclr" and run.info["model"] == "upgraded_cnn"
    ckpt = load_checkpoint(encoder_dir / "encoder.pt")  # weights_only=True
    assert ckpt["image_size"] == 32 and ckpt["feature_dim"] == 256
    assert not any(k.startswith("classifier.2") for k in ckpt["state_dict"])
    store = Store.open(small_data)
    split = load_split(store)
    ids = set(pd.read_csv(encoder_dir / "pretrain_ids.csv", dtype=str)["id"])
    assert ids and not ids & (set(split.ids("val")) | set(split.ids("test")))
    assert ids <= set(store.table["id"].astype(str).to_numpy()[split.positions(store.table, "train")])
    history = pd.read_csv(encoder_dir / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]
    assert history["knn_roc_auc"].notna().iloc[[0, -1]].all()  # scored before training and at the end
    q = run.metrics["quality"]
    assert 0 <= q["knn_roc_auc"] <= 1 and 0 <= q["probe_pauc_80"] <= 0.2
    assert (encoder_dir / "figures" / "pretrain_curves.png").exists()


def test_encoder_folder_holds_only_declared_record_keys(encoder_dir):
    assert undeclared_record_keys(encoder_dir) == []


def test_an_interrupted_pretraining_resumes_where_it_stopped(small_data, tmp_path, encoder_dir):
    out = tmp_path / "enc"
    cfg = _cfg(small_data)

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, out, on_epoch=stop_after_first)
    assert not out.exists() and (state_dir(out) / "state.pt").exists()
    with pytest.raises(BadInputError, match="other settings.*epochs"):
        pretrain(_cfg(small_data, epochs=3), out)
    info = pretrain(cfg, out)
    assert info["resumed_from_epoch"] == 1 and info["epochs_run"] == 2
    assert not state_dir(out).exists()
    # the same weights as the uninterrupted run of the same settings
    a, b = load_encoder(out).state_dict, load_encoder(encoder_dir).state_dict
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


@pytest.mark.parametrize("method", ["byol", "dino"])
def test_pretrain_cli_with_momentum_methods(method, small_data, tmp_path):
    out = tmp_path / method
    r = cli("pretrain", small_data, "--out", out, "--method", method, "--epochs", 1, "--batch-size", 16,
            "--inner-val", 0.3, "--local-views", 1)
    assert "inner-val kNN ROC AUC" in r.output
    assert Run.load(out).info["method"] == method


def test_pretraining_on_val_or_test_images_is_refused(small_data, tmp_path, sample_manifest):
    with pytest.raises(LeakError, match="the data set of the split itself"):
        pretrain(_cfg(small_data, pretrain_data=str(small_data)), tmp_path / "e1")
    # another data set holding some of the split's validation images, under their own ids
    from conftest import copy_subset
    from lesionlab.data.sources import read_source
    from lesionlab.data.store import prepare

    store = Store.open(small_data)
    val = set(load_split(store).ids("val"))
    stem = sample_manifest["path"].str.extract(r"([^/]+)\.jpg$")[0]
    rows = sample_manifest[stem.isin(val)].head(3)
    other = pd.concat([rows, sample_manifest[~stem.isin(store.table["id"])].head(20)])
    manifest = copy_subset(other.reset_index(drop=True), tmp_path / "raw")
    prepare(read_source(manifest), tmp_path / "other", size=32, workers=1)
    with pytest.raises(LeakError, match=r"holds 3 of the split's val/test images \(by id\)"):
        pretrain(_cfg(small_data, pretrain_data=str(tmp_path / "other")), tmp_path / "e2")
    # the same pictures under new ids: found by content
    renamed = other.assign(id=[f"X{i}" for i in range(len(other))])
    if "lesion_id" in renamed:
        renamed["lesion_id"] = [f"L{i}" for i in range(len(renamed))]
    manifest = copy_subset(renamed.reset_index(drop=True), tmp_path / "raw2")
    prepare(read_source(manifest), tmp_path / "other2", size=32, workers=1)
    with pytest.raises(LeakError, match="copies of the split's val/test images"):
        pretrain(_cfg(small_data, pretrain_data=str(tmp_path / "other2")), tmp_path / "e3")
    assert not any((tmp_path / n).exists() for n in ("e1", "e2", "e3"))


def test_pretrain_bad_settings_are_named(small_data, tmp_path):
    with pytest.raises(BadInputError, match="--method"):
        build_pretrain_config({"data": str(small_data), "method": "mocov9"})
    with pytest.raises(BadInputError, match="unknown config key 'epoch' \\(did you mean 'epochs'"):
        build_pretrain_config({"data": str(small_data), "epoch": 3})
    r = cli("pretrain", small_data, "--out", tmp_path / "x", "--model", "resnet17", ok=False)
    assert r.exit_code == 2 and "did you mean 'resnet18'" in r.output


# ---------------------------------------------------------------- train --pretrained ENC_DIR


def test_the_encoder_loads_into_train_and_changes_the_starting_weights(encoder_dir):
    enc = load_encoder(encoder_dir)
    torch.manual_seed(0)
    fresh = create_model("upgraded_cnn", image_size=32)
    torch.manual_seed(0)
    model = create_model("upgraded_cnn", image_size=32)
    load_encoder_state(model, enc.state_dict, "test")
    before, after = fresh.state_dict(), model.state_dict()
    for k in after:
        if is_head_key(k, "classifier.2"):
            assert torch.equal(after[k], before[k])  # the head stays as initialised
        else:
            assert torch.equal(after[k], enc.state_dict[k])
    assert not torch.equal(after["features.0.weight"], before["features.0.weight"])


def test_train_with_pretrained_encoder_dir(encoder_dir, small_data, tmp_path):
    r = cli("train", "--data", small_data, "--out", tmp_path / "run", "--model", "upgraded_cnn", "--pretrained",
            encoder_dir, "--epochs", 1, "--bootstrap", 0, "--encoder-lr-mult", 0.1, "--n-malignant", 30)
    assert "Test Loss" in r.output
    info = Run.load(tmp_path / "run").info
    assert info["encoder"]["method"] == "simclr" and info["levers"]["encoder_lr_mult"] == 0.1


def test_an_encoder_pretrained_on_the_runs_own_train_pool_is_checked_by_id_not_by_content(encoder_dir, small_data,
                                                                                            monkeypatch):
    # inside one data set the split decides which images belong together: on the ISIC 2024 crops a content check
    # matched 54 distinct train-pool lesions to val/test ones by shape (plain skin around a small spot) and refused
    # an encoder pretrained on the train pool itself
    from lesionlab.data import copy_guard
    from lesionlab.runs import encoder_run

    monkeypatch.setattr(copy_guard, "copies_in_store", lambda *a, **k: [(0, 0, 0.995)])  # every image a look-alike
    monkeypatch.setattr(encoder_run, "_CHECKED", set())
    store = Store.open(small_data)
    split = load_split(store)
    enc = load_encoder(encoder_dir)
    encoder_run.check_not_pretrained_on(enc, store, split)  # no LeakError: the ids are the images
    # the id check still stands: an encoder that saw a validation image is refused
    val_id = str(split.ids("val")[0])
    monkeypatch.setattr(EncoderWeights, "pretrained_ids", lambda self: {val_id})
    monkeypatch.setattr(encoder_run, "_CHECKED", set())
    with pytest.raises(LeakError, match=f"were among the images it was pretrained on: {val_id}"):
        encoder_run.check_not_pretrained_on(enc, store, split)


def test_an_encoder_of_another_architecture_or_size_is_refused(encoder_dir, small_data, tmp_path):
    r = cli("train", "--data", small_data, "--out", tmp_path / "run", "--model", "resnet18", "--pretrained",
            encoder_dir, "--epochs", 1, "--n-malignant", 30, ok=False)
    assert r.exit_code == 2 and "pretrained as 'upgraded_cnn'" in r.output and "'resnet18'" in r.output
    enc = load_encoder(encoder_dir)
    with pytest.raises(BadInputError, match="pretrained at 32 px but this run's data set is 64 px"):
        check_encoder_fits(enc, "upgraded_cnn", 64)
    # a trained run is not an encoder
    with pytest.raises(BadInputError, match="not a complete encoder folder"):
        load_encoder(tmp_path)
    wrong = EncoderWeights(encoder_dir, "upgraded_cnn", 32, "simclr", 256, {"features.0.weight": torch.zeros(1)}, {}, {})
    with pytest.raises(BadInputError, match="do not fit UpgradedCNN.*shape differs"):
        load_encoder_state(create_model("upgraded_cnn", image_size=32), wrong.state_dict, "x")


def test_linear_probe_epochs_hold_the_encoder_weights(encoder_dir, small_data, tmp_path):
    cfg = build_config({"data": str(small_data), "model": "upgraded_cnn", "pretrained": str(encoder_dir),
                        "epochs": 1, "linear_probe_epochs": 1, "bootstrap": 0, "lr": 1e-2,
                        "n_malignant": 30})
    train_process(cfg, tmp_path / "probe")
    trained = load_checkpoint(tmp_path / "probe" / "checkpoint.pt")["state_dict"]
    enc = load_encoder(encoder_dir).state_dict
    params = {n for n, _ in create_model("upgraded_cnn", image_size=32).named_parameters()}
    for k in params:
        if is_head_key(k, "classifier.2"):
            continue
        assert torch.equal(trained[k], enc[k]), k
    torch.manual_seed(0)
    assert not torch.equal(trained["classifier.2.weight"], create_model("upgraded_cnn", image_size=32).state_dict()["classifier.2.weight"])


def test_encoder_lr_mult_sets_the_encoder_group_lr():
    from lesionlab.engine.trainer import TrainOptions, _param_groups

    model = create_model("upgraded_cnn", image_size=32)
    opts = TrainOptions.from_config(build_config({"epochs": 1, "batch_size": 2, "lr": 1e-3, "encoder_lr_mult": 0.1}),
                                    None, head="classifier.2")
    groups, enc = _param_groups(model, opts)
    assert groups[0]["lr"] == pytest.approx(1e-4) and groups[1]["lr"] == 1e-3
    assert len(groups[1]["params"]) == 2 and len(enc) == len(list(model.parameters())) - 2


def test_config_accepts_an_encoder_dir_for_any_model(encoder_dir):
    assert build_config({"model": "simple_cnn", "pretrained": str(encoder_dir)}).pretrained == str(encoder_dir)
    with pytest.raises(BadInputError, match="has no pretrained weights"):
        build_config({"model": "simple_cnn", "pretrained": "/nonexistent/enc"})
    shutil.rmtree(state_dir(encoder_dir), ignore_errors=True)


def test_an_encoder_pretrained_on_the_test_images_under_other_ids_is_refused(small_data, tmp_path):
    from lesionlab.data.store import Store

    raw = small_data.parent / "raw"
    manifest = pd.read_csv(raw / "manifest.csv", dtype=str, keep_default_na=False)
    renamed = manifest.assign(id=[f"other_{i}" for i in range(len(manifest))],
                              lesion_id=[f"L{i}" for i in range(len(manifest))])
    renamed["path"] = [str(raw / p) for p in manifest["path"]]  # the same image files
    (tmp_path / "other").mkdir()
    renamed.to_csv(tmp_path / "other" / "manifest.csv", index=False)
    other = tmp_path / "other-data"
    cli("prepare", tmp_path / "other" / "manifest.csv", "--out", other, "--size", "32", "--workers", "1")
    cli("split", other, "--val", "3:10", "--test", "3:10")
    enc = tmp_path / "enc"
    cli("pretrain", other, "--out", enc, "--epochs", "1", "--batch-size", "32", "--inner-val", "0.3",
        "--local-views", "1", "--num-threads", "2")
    assert not set(pd.read_csv(enc / "pretrain_ids.csv")["id"]) & set(Store.open(small_data).table["id"])
    r = cli("train", "--data", small_data, "--out", tmp_path / "run", "--model", "upgraded_cnn", "--pretrained", enc,
            *FLAGS, ok=False)
    _one_line_error(r, f"--pretrained {enc}", "copies of this run's val/test images")
    assert not (tmp_path / "run").exists()


def _one_line_error(r, *needles: str) -> None:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output, r.output
    for n in needles:
        assert n in r.output, r.output


def test_the_encoders_features_are_computed_at_full_precision_under_a_bf16_runtime():
    """A run trained under bf16 autocast embeds its quality images in float32: the same features as a
    float32 runtime's, far inside bf16's own error (about 1e-3 on these features)."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    cpu = torch.device("cpu")
    in_bf16 = embed(encoder, images, Runtime(cpu, bf16=True, channels_last=False), 32)
    in_fp32 = embed(encoder, images, Runtime(cpu, bf16=False, channels_last=False), 32)
    np.testing.assert_allclose(in_bf16, in_fp32, atol=1e-6)
