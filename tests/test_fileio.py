"""The guards in fileio: CSV cells a spreadsheet would run as formulas, and checkpoints that
would run code when unpickled."""
import io
import os
import pickle
import shlex

import numpy as np
import pandas as pd
import pytest
import torch

from lesionlab.errors import BadInputError
from lesionlab.fileio import csv_restore, csv_safe, load_checkpoint, safe_to_csv, write_csv

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
