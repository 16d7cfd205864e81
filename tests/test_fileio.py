"""The guards in fileio: CSV cells a spreadsheet would run as formulas, checkpoints that
would run code when unpickled, and the one lock helper every lock goes through."""
import io
import os
import pickle
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lesionlab
from lesionlab.errors import BadInputError
from lesionlab.fileio import csv_restore, csv_safe, held_lock, load_checkpoint, safe_to_csv, write_csv

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
