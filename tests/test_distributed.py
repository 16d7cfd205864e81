"""Several processes: DDP on CPU (gloo) against one process, torchrun, and sweep workers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import cli
from lesionlab.data.parallel import cpu_count

# a draw of 16 malignant + 32 benign = 48 images: 3 global batches of 16, 8 per process with 2
# fp32: on a CPU with native bf16 (AVX512-BF16) --precision auto picks bf16, whose rounding turns the different
# summation order of 2 processes into differences above 1e-3 (measured 0.0017-0.0028; fp32: 3.5e-5)
DDP_FLAGS = ["--epochs", "2", "--batch-size", "16", "--n-malignant", "16", "--bootstrap", "50", "--num-threads", "1",
             "--precision", "32"]
# 2 processes follow the same trajectory as 1; only the order of floating-point sums differs
TOLERANCE = 1e-3



def _same_run(a: Path, b: Path) -> None:
    pa, pb = pd.read_csv(a / "predictions.csv"), pd.read_csv(b / "predictions.csv")
    assert (pa["id"] == pb["id"]).all()
    assert np.abs(pa["prob"] - pb["prob"]).max() < TOLERANCE
    ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    for side in ("val", "test"):
        for k in ("loss", "accuracy", "f1", "roc_auc", "average_precision", "pauc_80"):
            assert ma[side][k] == pytest.approx(mb[side][k], abs=TOLERANCE), (side, k)
    ha, hb = pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv")
    assert np.allclose(ha["train_loss"], hb["train_loss"], atol=TOLERANCE)


@pytest.mark.skipif(cpu_count() < 2, reason="needs 2 cores")
def test_two_processes_match_one(small_data, tmp_path):
    cli("train", "--data", small_data, "--out", tmp_path / "one", *DDP_FLAGS)
    cli("train", "--data", small_data, "--out", tmp_path / "two", *DDP_FLAGS, "--devices", "2")
    _same_run(tmp_path / "one", tmp_path / "two")
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["speed"]["processes"] == 2
    assert not list(tmp_path.glob(".two.partial*"))  # rank 0 alone wrote, and finished


@pytest.mark.skipif(cpu_count() < 2, reason="needs 2 cores")
def test_torchrun_launch_matches_too(small_data, tmp_path):
    cli("train", "--data", small_data, "--out", tmp_path / "one", *DDP_FLAGS)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "lesionlab", "train", "--data", str(small_data),
           "--out", str(tmp_path / "tr"), *DDP_FLAGS, "--devices", "2"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _same_run(tmp_path / "one", tmp_path / "tr")


def test_devices_beyond_the_machine_and_uneven_batches(small_data, tmp_path):
    r = cli("train", "--data", small_data, "--out", tmp_path / "r", *DDP_FLAGS, "--devices", "999", ok=False)
    assert r.exit_code == 2 and "--devices 999: this machine has" in r.output
    r = cli("train", "--data", small_data, "--out", tmp_path / "r", *DDP_FLAGS, "--num-nodes", "2", ok=False)
    assert "torchrun" in r.output
    if cpu_count() >= 2:
        r = cli("train", "--data", small_data, "--out", tmp_path / "r", *DDP_FLAGS, "--devices", "2",
                "--batch-size", "15", ok=False)
        assert "must divide evenly" in r.output
    assert not (tmp_path / "r").exists()


def test_sweep_with_two_local_workers_runs_everything_once(small_data, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "out": str(tmp_path / "runs"), "base": {"epochs": 1, "n_malignant": 10, "batch_size": 16, "bootstrap": 20},
        "experiments": [{"name": "a", "ratio": "1:1"}, {"name": "b", "ratio": "1:2"}], "grid": {"seed": [0, 1]}}))
    r = cli("sweep", sweep, "--data", small_data, "--workers", "2")
    assert "4 of 4 runs complete" in r.output
    runs = sorted(p.parent for p in (tmp_path / "runs").rglob("metrics.json"))
    assert len(runs) == 4 and not list((tmp_path / "runs").rglob("*.lock"))


def test_job_array_tasks_partition_the_sweep(small_data, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "out": str(tmp_path / "runs"), "base": {"epochs": 1, "n_malignant": 10, "batch_size": 16, "bootstrap": 20},
        "experiments": [{"name": "a", "ratio": "1:1"}], "grid": {"seed": [0, 1, 2]}}))
    cli("sweep", sweep, "--data", small_data, "--task-index", "1", "--task-count", "2")
    assert sorted(p.name for p in (tmp_path / "runs" / "a").iterdir()) == ["seed-1"]
    cli("sweep", sweep, "--data", small_data, "--task-index", "0", "--task-count", "2", "--claim")
    assert sorted(p.name for p in (tmp_path / "runs" / "a").iterdir()) == ["seed-0", "seed-1", "seed-2"]


def test_a_dead_workers_lock_is_taken_over(small_data, tmp_path):
    import socket

    from lesionlab.sweep import _claim, _lock_path

    folder = tmp_path / "runs" / "x" / "seed-0"
    lock = _lock_path(folder)
    lock.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{socket.gethostname()} {dead.pid} 0\n")
    assert _claim(folder)  # the pid is gone: the run is free again
    assert not _claim(folder)  # now it is ours, so nobody else gets it
