"""`lesionlab sweep`: a grid of runs that skips complete ones and resumes, its worker processes and
job-array tasks, and its claim files."""
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import cli

DDP_FLAGS = ["--epochs", "2", "--batch-size", "16", "--n-malignant", "16", "--bootstrap", "50", "--num-threads", "1",
             "--precision", "64"]


def test_sweep_runs_skips_and_resumes(pipeline, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "out": str(tmp_path / "runs"),
        "base": {"epochs": 1, "n_malignant": 15, "batch_size": 16, "bootstrap": 50},
        "experiments": [{"name": "a 1:1", "ratio": "1:1"}, {"name": "a 1:2", "ratio": "1:2"}],
        "grid": {"seed": [0, 1]},
    }))
    r = cli("sweep", sweep, "--data", pipeline["data"])
    assert "4 run(s) done, 0 already complete" in r.output
    shutil.rmtree(tmp_path / "runs" / "a_1to2" / "seed-1")  # as if interrupted
    r = cli("sweep", sweep, "--data", pipeline["data"])
    assert "1 run(s) done, 3 already complete" in r.output
    cli("report", tmp_path / "runs", "--out", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| a 1:1 | simple\\_cnn | 15:15 | 2 |" in md and " ± " in md  # names are Markdown-escaped


def test_sweep_refuses_a_changed_config(pipeline, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    spec = {"out": str(tmp_path / "runs"), "base": {"epochs": 1, "n_malignant": 10, "bootstrap": 20},
            "experiments": [{"name": "x", "ratio": "1:1"}]}
    sweep.write_text(yaml.safe_dump(spec))
    cli("sweep", sweep, "--data", pipeline["data"])
    spec["base"]["lr"] = 0.01
    sweep.write_text(yaml.safe_dump(spec))
    r = cli("sweep", sweep, "--data", pipeline["data"], ok=False)
    assert "another config" in r.output


# a draw of 16 malignant + 32 benign = 48 images: 3 global batches of 16, 8 per process with 2


@pytest.mark.slow
def test_sweep_with_two_local_workers_runs_everything_once(small_data, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "out": str(tmp_path / "runs"), "base": {"epochs": 1, "n_malignant": 10, "batch_size": 16, "bootstrap": 20},
        "experiments": [{"name": "a", "ratio": "1:1"}, {"name": "b", "ratio": "1:2"}], "grid": {"seed": [0, 1]}}))
    r = cli("sweep", sweep, "--data", small_data, "--workers", "2")
    assert "4 of 4 runs complete" in r.output
    runs = sorted(p.parent for p in (tmp_path / "runs").rglob("metrics.json"))
    assert len(runs) == 4 and not list((tmp_path / "runs").rglob(".*.claim"))  # every claim released


@pytest.mark.slow
def test_job_array_tasks_partition_the_sweep(small_data, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "out": str(tmp_path / "runs"), "base": {"epochs": 1, "n_malignant": 10, "batch_size": 16, "bootstrap": 20},
        "experiments": [{"name": "a", "ratio": "1:1"}], "grid": {"seed": [0, 1, 2]}}))
    cli("sweep", sweep, "--data", small_data, "--task-index", "1", "--task-count", "2")
    assert _runs_in(tmp_path / "runs" / "a") == ["seed-1"]
    cli("sweep", sweep, "--data", small_data, "--task-index", "0", "--task-count", "2", "--claim")
    assert _runs_in(tmp_path / "runs" / "a") == ["seed-0", "seed-1", "seed-2"]


def _runs_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))  # not the locks beside


def test_a_dead_workers_lock_is_taken_over(small_data, tmp_path):
    import socket

    from lesionlab.workflows.sweep import _claim, _claim_path

    folder = tmp_path / "runs" / "x" / "seed-0"
    lock = _claim_path(folder)
    lock.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{socket.gethostname()} {dead.pid} 0\n")
    assert _claim(folder)  # the pid is gone: the run is free again
    assert not _claim(folder)  # now it is ours, so nobody else gets it


def test_a_sweep_still_recognises_runs_made_before_the_calibrate_key(tmp_path):
    from lesionlab.config import build_config, to_dict
    from lesionlab.runs import RunWriter
    from lesionlab.workflows.sweep import same_config

    cfg = build_config({"data": "d"})
    with RunWriter(tmp_path / "r", "train") as w:
        w.finish({k: v for k, v in to_dict(cfg).items() if k != "calibrate"}, {}, {"val": {}, "test": {}})
    assert same_config(tmp_path / "r", cfg)
    assert not same_config(tmp_path / "r", cfg.model_copy(update={"calibrate": "temperature"}))


def test_two_workers_taking_over_a_dead_claim_one_wins(tmp_path, monkeypatch):
    """Before: read the claim, see its worker dead, unlink, create ours; two workers that both read
    the dead claim both won (the second unlinked the first one's fresh claim)."""
    from lesionlab.workflows import sweep

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = sweep.pid_alive

    def slow_alive(pid: int) -> bool:  # a slow check widens the window between reading and unlinking
        time.sleep(0.05)
        return alive(pid)

    monkeypatch.setattr(sweep, "pid_alive", slow_alive)
    for k in range(5):
        folder = tmp_path / "runs" / f"seed-{k}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        sweep._claim_path(folder).write_text(f"{socket.gethostname()} {dead.pid} 0\n")
        start, won = threading.Barrier(2), []

        def worker():
            start.wait()
            won.append(sweep._claim(folder))

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(won) == [False, True], k
        assert sweep._claim_path(folder).read_text().split()[1] == str(os.getpid())
