"""Concurrent and interrupted use: two processes writing one folder, racing sweep workers, a killed
prepare, a damaged store, and files that other users can read."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lesionlab
from conftest import SAMPLE, cli, copy_subset, subset
from lesionlab.data.sources import read_source
from lesionlab.data.store import Store, prepare
from lesionlab.errors import BadInputError, ExistsError, LesionLabError
from lesionlab.fileio import exclusive, process_umask, staged_dir, write_text
from lesionlab.metrics import compute_metrics
from lesionlab.runs import is_complete_run

TRAIN = ["--epochs", "3", "--batch-size", "16", "--n-malignant", "16", "--bootstrap", "200", "--num-threads", "1"]


def _env() -> dict:
    # the lesionlab under test, whatever an installed copy or the working directory would give
    src = str(Path(lesionlab.__file__).parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lesionlab", *map(str, args)], env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 60):
    """Poll until condition() is truthy (and return it) while `proc` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}"
        time.sleep(0.05)
    raise AssertionError("timed out")


# ------------------------------------------------------------------ fileio.staged_dir, atomic_path


def test_staged_dir_publishes_whole_or_leaves_nothing(tmp_path):
    final = tmp_path / "out" / "run"
    with staged_dir(final) as staging:
        assert staging.parent == final.parent and staging.name.startswith(".run.partial-")
        write_text(staging / "a.txt", "a")
    assert (final / "a.txt").read_text() == "a"
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "out" / "other") as staging:
            write_text(staging / "a.txt", "a")
            raise RuntimeError("fails half-way")
    assert not (tmp_path / "out" / "other").exists()
    assert not list((tmp_path / "out").glob(".*.partial-*"))


def test_staged_dir_refuses_a_result_a_busy_folder_and_a_late_competitor(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    (final / "notes.txt").write_text("mine")
    with pytest.raises(ExistsError, match=f"{final}: exists and is not empty"):
        with staged_dir(final):
            pass
    assert (final / "notes.txt").read_text() == "mine"
    # another process holds the lock: refused at once, not after waiting for it
    other = tmp_path / "other"
    with exclusive(other):
        t0 = time.monotonic()
        with pytest.raises(ExistsError, match=f"{other}: another lesionlab process is writing this folder"):
            with staged_dir(other):
                pass
        assert time.monotonic() - t0 < 1
    assert not other.exists()
    # a result that appears while ours is built (without the lock) is not replaced
    late = tmp_path / "late"
    with pytest.raises(ExistsError, match=f"{late}: exists and is not empty"):
        with staged_dir(late) as staging:
            write_text(staging / "ours.txt", "ours")
            late.mkdir()
            (late / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in late.iterdir()) == ["theirs.txt"]
    assert not list(tmp_path.glob(".late.partial-*"))


def test_staged_dir_clears_what_a_killed_writer_left(tmp_path):
    stale = tmp_path / ".run.partial-deadbeef"
    stale.mkdir()
    (stale / "half.txt").write_text("half")
    with staged_dir(tmp_path / "run") as staging:
        assert staging != stale
    assert not stale.exists() and (tmp_path / "run").is_dir()


def test_atomic_writes_create_no_folders(tmp_path):
    """A file meant for a run folder that was removed (or published) meanwhile must not re-create it."""
    with pytest.raises(LesionLabError, match=f"{tmp_path / 'gone'}"):
        write_text(tmp_path / "gone" / "metrics.json", "{}")
    assert not (tmp_path / "gone").exists()


# ------------------------------------------------------------------ two trains, one --out


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
    procs = {seed: _start("train", "--data", small_data, "--out", out, *TRAIN, "--seed", seed) for seed in (0, 1)}
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


# ------------------------------------------------------------------ two prepares, one --out


def test_second_prepare_into_a_busy_folder_is_refused(tmp_path):
    """Before: the second (another --size) re-created images.npy under the first one's memory map,
    and the first died of SIGBUS."""
    out = tmp_path / "data"
    first = _start("prepare", SAMPLE, "--out", out, "--size", "64", "--workers", "1")
    _wait_for(lambda: (out / ".prepare-progress.json").exists(), first)  # it holds the lock and has allocated
    # paused, so that the second surely runs while the first is mid-way (it decodes in ~2 s otherwise)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run([sys.executable, "-m", "lesionlab", "prepare", SAMPLE, "--out", out, "--size", "32"],
                                env=_env(), capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"{out}: another lesionlab process is preparing this folder" in second.stderr
    assert first.wait(timeout=300) == 0, first.communicate()[1][-2000:]
    assert Store.open(out).images.shape == (780, 64, 64, 3)


# ------------------------------------------------------------------ sweep workers racing for a dead claim


def test_two_workers_taking_over_a_dead_claim_one_wins(tmp_path, monkeypatch):
    """Before: read the claim, see its worker dead, unlink, create ours; two workers that both read
    the dead claim both won (the second unlinked the first one's fresh claim)."""
    from lesionlab import sweep

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


# ------------------------------------------------------------------ kill -9 of prepare


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (now init) has yet to reap it


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_killed_prepare_takes_its_workers_along(tmp_path):
    proc = _start("prepare", SAMPLE, "--out", tmp_path / "data", "--size", "64", "--workers", "2")
    workers = _wait_for(lambda: _children(proc.pid), proc)
    proc.kill()  # SIGKILL: no handler, no clean-up in the parent
    proc.wait()
    deadline = time.monotonic() + 5
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [w for w in workers if _running(w)]
    for w in left:  # do not leave them behind for the rest of the suite
        os.kill(w, signal.SIGKILL)
    assert not left, f"decoding workers {left} outlived their killed prepare"


# ------------------------------------------------------------------ a damaged store


@pytest.mark.parametrize("damage", ["truncate", "fewer rows"])
def test_damaged_store_refused_at_open(small_data, tmp_path, damage):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    images = data / "images.npy"
    if damage == "truncate":
        with open(images, "r+b") as f:
            f.truncate(images.stat().st_size // 2)
    else:
        np.save(images, np.zeros((10, 32, 32, 3), np.uint8))
    with pytest.raises(BadInputError, match=rf"{images}: .*run `lesionlab prepare SOURCE --out {data}` again"):
        Store.open(data)
    r = cli("train", "--data", data, "--out", tmp_path / "run", "--epochs", "1", "--n-malignant", "10", ok=False)
    assert r.exit_code == 2 and f"{images}:" in r.output, r.output


# ------------------------------------------------------------------ files others can read


@pytest.fixture
def umask():
    """Set the process umask for a test (and forget the cached one before and after)."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_to(mask: int) -> None:
        os.umask(mask)
        process_umask.cache_clear()

    yield set_to
    os.umask(saved)
    process_umask.cache_clear()


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_written_files_follow_the_umask(small_data, tmp_path, sample_manifest, umask):
    """mkstemp and mkdtemp make 0600 files and 0700 folders: store, split, run and report files were
    unreadable to everyone else whatever the umask."""
    umask(0o022)
    manifest = copy_subset(subset(sample_manifest, 10, 30), tmp_path / "raw")
    data, run = tmp_path / "data", tmp_path / "run"
    prepare(read_source(manifest), data, size=16, workers=1)
    cli("split", data, "--val", "2:6", "--test", "2:6")
    cli("train", "--data", small_data, "--out", run, "--epochs", "1", "--n-malignant", "10", "--bootstrap", "10")
    cli("report", run, "--out", tmp_path / "report")
    for root in (data, run, tmp_path / "report"):
        for name, mode in _modes(root).items():
            want = 0o755 if (root / name).is_dir() else 0o644
            assert mode == want, f"{root / name}: mode {oct(mode)}, umask 022 gives {oct(want)}"
    umask(0o077)  # the umask, not a fixed 0644
    write_text(tmp_path / "private.txt", "x")
    with staged_dir(tmp_path / "private") as staging:
        write_text(staging / "x.txt", "x")
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
