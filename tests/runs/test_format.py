"""The run-folder format's owner: versions, kinds, loading a predictor, refusing unsafe checkpoints."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import RUN_FLAGS as FLAGS  # the tiny runs' flags, one list for every file
from conftest import cli, undeclared_record_keys
from lesionlab.errors import BadInputError
from lesionlab.runs import FORMAT_VERSION, Run, find_runs, load_predictor


@pytest.fixture(scope="module")
def run_dir(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    cli("train", "--data", small_data, "--out", out, *FLAGS)
    return out


def test_run_json_names_its_format_and_compute_is_measured_only_when_asked(run_dir):
    info = json.loads((run_dir / "run.json").read_text())
    assert info["format"] == {"version": FORMAT_VERSION, "kind": "train"}
    assert info["speed"]["compute_img_s"] is None and info["speed"]["loop_vs_compute"] is None
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["model_kwargs"] == {} and ckpt["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_run_json_and_metrics_json_hold_only_declared_keys(run_dir):
    assert undeclared_record_keys(run_dir) == []


def test_predictor_reproduces_the_runs_own_test_probabilities(run_dir, small_data):
    from lesionlab.data.store import Store

    store = Store.open(small_data)
    preds = Run.load(run_dir).predictions("test")
    pos = store.table.reset_index(drop=True).reset_index().set_index("id").loc[preds["id"], "index"].to_numpy()
    probs = load_predictor(run_dir, device="cpu").probabilities(store.pixels(pos))
    assert np.abs(probs - preds["prob"].to_numpy()).max() < 1e-5


def test_older_unversioned_runs_still_load_and_newer_ones_are_refused(run_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    info = json.loads((old / "run.json").read_text())
    info.pop("format")
    (old / "run.json").write_text(json.dumps(info))
    assert Run.load(old).format_version == 0 and Run.load(old).kind == "train"
    info["format"] = {"version": FORMAT_VERSION + 1, "kind": "train"}
    (old / "run.json").write_text(json.dumps(info))
    with pytest.raises(BadInputError, match="format version"):
        Run.load(old)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch EXPLOITED",))


def test_a_malicious_checkpoint_is_refused_and_never_runs(run_dir, tmp_path, monkeypatch):
    evil = tmp_path / "evil"
    shutil.copytree(run_dir, evil)
    torch.save({"model": "simple_cnn", "payload": _Exploit()}, evil / "checkpoint.pt")
    monkeypatch.chdir(tmp_path)
    r = cli("predict", evil, tmp_path, "--out", tmp_path / "p.csv", ok=False)
    assert r.exit_code == 2 and "may be unsafe" in r.output and "checkpoint.pt" in r.output
    assert not (tmp_path / "EXPLOITED").exists()


def test_find_runs_sees_train_runs_only_by_default(run_dir):
    runs = find_runs(run_dir.parent)
    assert [r.path for r in runs] == [run_dir]
    assert pd.api.types.is_string_dtype(runs[0].predictions()["id"])
