"""`lesionlab ensemble`: the members' mean (of probabilities or logits), with test-time augmentation, and the
members it refuses."""
import json
import shutil

import numpy as np
import pandas as pd
import torch

from conftest import RUN_FLAGS as FLAGS  # the tiny runs' flags, one list for every file
from conftest import cli, undeclared_record_keys
from lesionlab.runs import Run, load_predictor


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
