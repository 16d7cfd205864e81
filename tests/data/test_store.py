import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE, cli, copy_subset, subset
from lesionlab.data import store as store_mod
from lesionlab.data.images import decode_resize
from lesionlab.data.sources import read_source
from lesionlab.data.store import Store, prepare
from lesionlab.errors import BadInputError, ExistsError, LesionLabError
from processes import child_pids, is_running, lesionlab_env, start_lesionlab, wait_for


@pytest.fixture
def manifest(tmp_path, sample_manifest):
    return copy_subset(subset(sample_manifest, 10, 30), tmp_path / "raw")


def test_prepare_decodes_once_into_memmap(tmp_path, manifest):
    out, state = prepare(read_source(manifest), tmp_path / "d", size=24, workers=2)
    assert state == "new"
    s = Store.open(out)
    assert s.images.shape == (40, 24, 24, 3) and isinstance(s.images, np.memmap)
    assert s.meta["counts"] == {"malignant": 10, "benign": 30}
    for i in (0, 17, 39):
        raw = (manifest.parent / s.table["locator"][i]).read_bytes()
        assert np.array_equal(s.pixels([i])[0], decode_resize(raw, 24))
    assert not (out / ".prepare-progress.json").exists()


def test_workers_give_identical_arrays(tmp_path, manifest):
    a, _ = prepare(read_source(manifest), tmp_path / "a", size=16, workers=1)
    b, _ = prepare(read_source(manifest), tmp_path / "b", size=16, workers=2)
    assert np.array_equal(Store.open(a).images, Store.open(b).images)
    assert Store.open(a).content_hash == Store.open(b).content_hash


def test_rerun_reuses_and_other_source_refused(tmp_path, manifest, sample_manifest):
    out, _ = prepare(read_source(manifest), tmp_path / "d", size=16)
    assert prepare(read_source(manifest), out, size=16)[1] == "reused"
    with pytest.raises(ExistsError, match="another source or size"):
        prepare(read_source(manifest), out, size=20)
    # the same source whose files changed since (here one file's time): said as such, not "another source"
    first = manifest.parent / Store.open(out).table["locator"][0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    with pytest.raises(ExistsError, match="images of .* changed since it was prepared"):
        prepare(read_source(manifest), out, size=16)


def test_non_empty_folder_refused(tmp_path, manifest):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExistsError, match="not a prepared data set"):
        prepare(read_source(manifest), tmp_path / "mine", size=16)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_interrupted_prepare_is_incomplete_then_resumes(tmp_path, manifest, monkeypatch):
    monkeypatch.setattr(store_mod, "CHUNK", 8)
    real = store_mod._decode_chunk
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(store_mod, "_decode_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare(read_source(manifest), tmp_path / "d", size=16, workers=1)
    with pytest.raises(BadInputError, match="interrupted"):
        Store.open(tmp_path / "d")  # never looks complete
    progress = json.loads((tmp_path / "d" / ".prepare-progress.json").read_text())
    assert progress["done"] == [0, 1]
    monkeypatch.setattr(store_mod, "_decode_chunk", real)
    out, state = prepare(read_source(manifest), tmp_path / "d", size=16, workers=1)
    assert state == "resumed"
    fresh, _ = prepare(read_source(manifest), tmp_path / "fresh", size=16, workers=1)
    assert np.array_equal(Store.open(out).images, Store.open(fresh).images)


def test_missing_and_unreadable_images(tmp_path, manifest):
    (manifest.parent / "images" / "ISIC_9999999.jpg").write_bytes(b"garbage")
    lines = manifest.read_text().splitlines()
    first = lines[1].split(",")
    lines.append(",".join(["images/ISIC_9999999.jpg", "0", "ISIC_9999999"] + first[3:]))
    lines.append(",".join(["images/ISIC_8888888.jpg", "1", "ISIC_8888888"] + first[3:]))
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=r"1 of 42 image\(s\) missing: ISIC_8888888"):
        prepare(read_source(manifest), tmp_path / "d", size=16)
    assert not (tmp_path / "d").exists()
    (manifest.parent / "images" / "ISIC_8888888.jpg").write_bytes(b"")
    with pytest.raises(BadInputError, match=r"2 of 42 image\(s\) could not be read.*ISIC_8888888 \(empty file\).*skip-bad"):
        prepare(read_source(manifest), tmp_path / "d", size=16)
    out, state = prepare(read_source(manifest), tmp_path / "d", size=16, skip_bad=True)
    s = Store.open(out)
    assert state == "resumed" and s.meta["n"] == 40
    assert sorted(x["id"] for x in s.meta["skipped"]) == ["ISIC_8888888", "ISIC_9999999"]
    assert "ISIC_9999999" not in set(s.table["id"])


def test_disk_full_is_a_clear_error_and_leaves_nothing(tmp_path, manifest, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(LesionLabError, match="not enough disk space"):
        prepare(read_source(manifest), tmp_path / "d", size=16)
    assert not (tmp_path / "d" / "images.npy").exists()
    with pytest.raises(BadInputError):
        Store.open(tmp_path / "d")


def test_bad_size(tmp_path, manifest):
    with pytest.raises(BadInputError, match="--size"):
        prepare(read_source(manifest), tmp_path / "d", size=4)


def test_isic2024_corrupt_entry_and_row_without_image(tmp_path):
    import h5py
    import pandas as pd

    from isic2024_fixture import write_isic2024

    raw = write_isic2024(tmp_path / "raw", n=30)
    meta = pd.read_csv(raw / "train-metadata.csv")
    broken, missing = meta["isic_id"][3], meta["isic_id"][7]
    with h5py.File(raw / "train-image.hdf5", "a") as f:
        del f[broken]
        f.create_dataset(broken, data=np.bytes_(b"\xff\xd8\xff not a jpeg"))
        del f[missing]
    # a row without an image is found before any decoding
    with pytest.raises(BadInputError, match=rf"1 of 30 image\(s\) missing: {missing}"):
        prepare(read_source(raw), tmp_path / "d", size=16)
    meta.drop(index=7).to_csv(raw / "train-metadata.csv", index=False)
    with pytest.raises(BadInputError, match=rf"1 of 29 image\(s\) could not be read: {broken} \("):
        prepare(read_source(raw), tmp_path / "d", size=16)
    meta.to_csv(raw / "train-metadata.csv", index=False)
    out, _ = prepare(read_source(raw), tmp_path / "d2", size=16, skip_bad=True)
    skipped = {s["id"]: s["reason"] for s in Store.open(out).meta["skipped"]}
    assert set(skipped) == {broken, missing} and skipped[missing] == "missing"


def _add_rows(manifest, rows: list[tuple[str, bytes]]) -> None:
    """Append (file name, bytes) rows to a manifest (the id is the file's stem), with the first
    row's other columns."""
    lines = manifest.read_text().splitlines()
    rest = lines[1].split(",")[2:]
    for name, data in rows:
        (manifest.parent / "images" / name).write_bytes(data)
        lines.append(",".join([f"images/{name}", "0"] + rest))
    manifest.write_text("\n".join(lines) + "\n")


def test_decompression_bombs_are_named_and_skippable(tmp_path, manifest):
    from hostile_files import jpeg_claiming, png_claiming

    _add_rows(manifest, [("PNG_BOMB.png", png_claiming(100_000, 100_000)),
                         ("JPEG_BOMB.jpg", jpeg_claiming(60_000, 60_000))])
    r = cli("prepare", manifest, "--out", tmp_path / "d", "--size", "16", ok=False)
    assert r.exit_code == 2 and "2 of 42 image(s) could not be read" in r.output, r.output
    assert "PNG_BOMB (100000x100000 = 10,000,000,000 pixels is over the limit of 178,956,970" in r.output
    assert "JPEG_BOMB (60000x60000" in r.output and "--max-pixels raises the limit" in r.output
    cli("prepare", manifest, "--out", tmp_path / "d", "--size", "16", "--skip-bad")
    s = Store.open(tmp_path / "d")
    assert s.meta["n"] == 40 and sorted(x["id"] for x in s.meta["skipped"]) == ["JPEG_BOMB", "PNG_BOMB"]


def test_max_pixels_limit_and_a_rerun_with_it_raised(tmp_path, manifest):
    # the sample's images are 200x150: a limit below that refuses them by name; the re-run with
    # the limit raised (as the message says) decodes them, although their chunk was finished
    r = cli("prepare", manifest, "--out", tmp_path / "d", "--size", "16", "--max-pixels", "29999", ok=False)
    assert r.exit_code == 2 and "40 of 40 image(s) could not be read" in r.output, r.output
    assert "200x150 = 30,000 pixels is over the limit of 29,999" in r.output
    r = cli("prepare", manifest, "--out", tmp_path / "d", "--size", "16")
    assert "resumed and finished: 40 images" in r.output


def test_out_naming_an_existing_file_is_refused(tmp_path, manifest):
    (tmp_path / "data.csv").write_text("mine")
    r = cli("prepare", manifest, "--out", tmp_path / "data.csv", "--size", "16", ok=False)
    assert r.exit_code == 2 and "data.csv: is an existing file; --out names a folder" in r.output, r.output
    assert (tmp_path / "data.csv").read_text() == "mine"
    with pytest.raises(ExistsError, match="is an existing file"):
        prepare(read_source(manifest), tmp_path / "data.csv", size=16)


def test_second_prepare_into_a_busy_folder_is_refused(tmp_path):
    """Before: the second (another --size) re-created images.npy under the first one's memory map,
    and the first died of SIGBUS."""
    out = tmp_path / "data"
    first = start_lesionlab("prepare", SAMPLE, "--out", out, "--size", "64", "--workers", "1")
    wait_for(lambda: (out / ".prepare-progress.json").exists(), first)  # it holds the lock and has allocated
    # paused, so that the second surely runs while the first is mid-way (it decodes in ~2 s otherwise)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run([sys.executable, "-m", "lesionlab", "prepare", SAMPLE, "--out", out, "--size", "32"],
                                env=lesionlab_env(), capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"{out}: another lesionlab process is preparing this folder" in second.stderr
    assert first.wait(timeout=300) == 0, first.communicate()[1][-2000:]
    assert Store.open(out).images.shape == (780, 64, 64, 3)




@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_killed_prepare_takes_its_workers_along(tmp_path):
    proc = start_lesionlab("prepare", SAMPLE, "--out", tmp_path / "data", "--size", "64", "--workers", "2")
    workers = wait_for(lambda: child_pids(proc.pid), proc)
    proc.kill()  # SIGKILL: no handler, no clean-up in the parent
    proc.wait()
    deadline = time.monotonic() + 5
    while any(is_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [w for w in workers if is_running(w)]
    for w in left:  # do not leave them behind for the rest of the suite
        os.kill(w, signal.SIGKILL)
    assert not left, f"decoding workers {left} outlived their killed prepare"


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
