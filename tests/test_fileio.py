"""The guards in fileio: CSV cells a spreadsheet would run as formulas, checkpoints that
would run code when unpickled, and the one lock helper every lock goes through."""
import io
import os
import pickle
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lesionlab
from conftest import cli, copy_subset, subset
from lesionlab.data.sources import read_source
from lesionlab.data.store import prepare
from lesionlab.errors import BadInputError, ExistsError, LesionLabError
from lesionlab.fileio import (
    csv_restore,
    csv_safe,
    exclusive,
    held_lock,
    load_checkpoint,
    process_umask,
    safe_to_csv,
    staged_dir,
    write_csv,
    write_text,
)

HOSTILE = ["=cmd|' /C calc'!A0", "-5", "@SUM(1)", "+1+1", "\tTAB", "\rCR", "'=quoted already", "''-twice"]
HARMLESS = ["ISIC_0001", "'plain quote", "a-b=c", "", "5"]


def test_formula_cells_neutralised_and_restored_exactly(tmp_path):
    ids = HOSTILE + HARMLESS
    df = pd.DataFrame({"id": ids, "label": np.arange(len(ids)) % 2, "delta": np.linspace(-5, 5, len(ids)),
                       "count": -np.arange(len(ids))})
    write_csv(tmp_path / "t.csv", df)
    back = pd.read_csv(tmp_path / "t.csv", dtype={"id": str}, keep_default_na=False)
    raw_ids = back["id"].tolist()
    assert all(cell.startswith("'") for cell in raw_ids[:len(HOSTILE)])  # shown as text by a spreadsheet
    assert raw_ids[len(HOSTILE):] == HARMLESS  # left as they were
    assert (back["delta"] == df["delta"]).all() and (back["count"] == df["count"]).all()  # numbers stay numbers
    assert csv_restore(back)["id"].tolist() == ids  # the round trip is exact, \r and \t included


def test_header_and_chunks_neutralised():
    df = pd.DataFrame({"=HYPERLINK(\"x\")": ["@x"], "ok": [1]})
    text = safe_to_csv(df, index=False)
    assert text.splitlines() == ['"\'=HYPERLINK(""x"")",ok', "'@x,1"]
    assert list(csv_restore(pd.read_csv(io.StringIO(text))).columns) == list(df.columns)


def test_no_copy_when_nothing_to_neutralise():
    df = pd.DataFrame({"id": ["a", "b"], "p": [-0.5, 0.5]})
    assert csv_safe(df) is df and csv_restore(df) is df


class _RunsACommand:
    """What a hostile checkpoint.pt holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def plant_hostile_checkpoint(path, marker, legacy: bool = False) -> None:
    """torch's zip format, or a bare pickle (torch.load reads both)."""
    payload = {"step": 1, "trainer": _RunsACommand(marker)}
    if legacy:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # the protocol torch itself writes
    else:
        torch.save(payload, path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "pickle"])
def test_checkpoint_that_would_run_code_is_refused(tmp_path, legacy):
    marker = tmp_path / "ran"
    plant_hostile_checkpoint(tmp_path / "checkpoint.pt", marker, legacy)
    with pytest.raises(BadInputError, match=r"checkpoint\.pt: holds Python objects that lesionlab does not load.*"
                                            r"(posix|os)\.system.*may be unsafe"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not marker.exists()


def test_checkpoint_of_tensors_loads_and_junk_is_named(tmp_path):
    torch.save({"state": {"w": torch.ones(2)}, "rng": torch.get_rng_state(), "step": 3, "lr": [0.1]}, tmp_path / "ok.pt")
    state = load_checkpoint(tmp_path / "ok.pt")
    assert state["step"] == 3 and torch.equal(state["state"]["w"], torch.ones(2))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(BadInputError, match=r"junk\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(BadInputError, match=r"missing\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_held_lock_waits_refuses_and_goes_with_its_process(tmp_path):
    """Another process's lock: not held with wait=0 or after a short wait, and the block is told so;
    the holder killed (no release), it is free at once; within one process it is taken and given back."""
    path = tmp_path / "x.lock"
    src = Path(lesionlab.__file__).parents[1]  # the package under test, in a fresh process
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom lesionlab.fileio import held_lock\n"
                               f"with held_lock({str(path)!r}) as held:\n    print(held, flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(src)})
    try:
        assert holder.stdout.readline().strip() == "True"
        ran = []
        with held_lock(path, wait=0) as held:
            ran.append(held)
        t0 = time.monotonic()
        with held_lock(path, wait=0.3) as held:
            ran.append(held)
        assert ran == [False, False] and time.monotonic() - t0 >= 0.3
    finally:
        holder.kill()
        holder.wait()
    with held_lock(path, wait=5) as held:
        assert held
    with held_lock(path, wait=0) as held:  # released at the end of the block above
        assert held


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
