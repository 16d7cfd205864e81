"""Run folders written by the previous release (0.1.0, before the command workflows moved into
workflows/) still load and score as they did there.

release_0_1_0/ holds folders that release wrote (how: its README.md), with what it predicted for
them. The train run's checkpoint.pt (2 MB) is not stored: train_checkpoint.json records that file
as the release wrote it, its plain entries verbatim and each tensor's name, shape and dtype, and
checkpoint_from_record() fills the tensors with seeded values; the release scored the images with
exactly that file (train_expected.csv)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

HERE = Path(__file__).parent / "release_0_1_0"
TOLERANCE = 1e-4  # written with 6 significant digits; float32 sums differ in order between machines


def checkpoint_from_record(record: dict, path: Path) -> None:
    """Write the recorded checkpoint: its plain entries as recorded, its tensors from numpy's seeded
    generator (the same values on every machine), weights of sd 0.3, positive running variances."""
    import torch

    rng = np.random.default_rng(record["seed"])
    state = {}
    for name, (shape, dtype) in record["state_dict"].items():
        if dtype == "torch.int64":
            state[name] = torch.zeros(shape, dtype=torch.int64)
        elif name.endswith("running_var"):
            state[name] = torch.from_numpy(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        else:
            state[name] = torch.from_numpy((rng.standard_normal(shape) * 0.3).astype(np.float32))
    torch.save({**record["entries"], "state_dict": state}, path)


@pytest.fixture
def old_train(tmp_path) -> Path:
    run = tmp_path / "train"
    shutil.copytree(HERE / "train", run)
    checkpoint_from_record(json.loads((HERE / "train_checkpoint.json").read_text()), run / "checkpoint.pt")
    return run


def test_a_train_run_of_the_previous_release_loads_and_scores_as_it_did(old_train, tmp_path):
    from lesionlab.runs import Run, find_runs, is_complete_run

    run = Run.load(old_train)
    assert run.kind == "train" and run.format_version == 1 and is_complete_run(old_train)
    assert [r.path for r in find_runs(tmp_path)] == [old_train]
    assert run.metrics["test"]["roc_auc"] == pytest.approx(json.loads((HERE / "train" / "metrics.json").read_text())["test"]["roc_auc"])
    expected = pd.read_csv(HERE / "train_expected.csv", dtype={"id": str})
    images = tmp_path / "images"
    images.mkdir()
    from lesionlab.workflows.demo import demo_files

    for image_id in expected["id"]:
        shutil.copyfile(demo_files() / "ham10000_sample" / "images" / f"{image_id}.jpg", images / f"{image_id}.jpg")
    from conftest import cli

    cli("predict", old_train, images, "--out", tmp_path / "p.csv")
    got = pd.read_csv(tmp_path / "p.csv", dtype={"id": str}).set_index("id").loc[expected["id"]]
    assert np.abs(got["prob"].to_numpy() - expected["prob"].to_numpy()).max() < TOLERANCE
    assert (got["decision"].to_numpy() == expected["decision"].to_numpy()).all()


def test_a_tabular_run_of_the_previous_release_loads_and_scores_rows_as_it_did(tmp_path):
    from lesionlab.runs import Run, is_complete_run, load_predictor

    run_dir = tmp_path / "tabular"
    shutil.copytree(HERE / "tabular", run_dir)
    run = Run.load(run_dir)
    assert run.kind == "tabular" and is_complete_run(run_dir)
    rows = pd.read_csv(HERE / "tabular_rows.csv", dtype=str, keep_default_na=False)
    expected = pd.read_csv(HERE / "tabular_expected.csv", dtype={"id": str})
    probs = load_predictor(run_dir, device="cpu").probabilities_rows(rows)
    assert list(rows["isic_id"]) == list(expected["id"])
    assert np.abs(np.asarray(probs) - expected["prob"].to_numpy()).max() < TOLERANCE
