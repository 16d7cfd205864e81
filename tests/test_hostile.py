"""The commands under hostile files and careless use: nothing the user made is lost, nothing
tampered with or damaged gives a traceback or eats the machine, every bad number is refused."""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import RUN_FLAGS as FLAGS  # the tiny runs' flags, one list for every file
from conftest import SAMPLE, cli, copy_subset, subset
from processes import child_pids, is_running

TAB_FLAGS = ["--features", "age,sex,localization", "--bootstrap", "20", "--num-threads", "1", "--max-rounds", "50",
             "--early-stopping", "10", "--min-child-samples", "5", "--folds", "3"]


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
TUNE_SEARCH = {"base": {"model": "simple_cnn", "epochs": 1},
               "space": {"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
               "objective": "inner_val", "metric": "pauc_80", "pruning": False}


@pytest.fixture(scope="module")
def run_dir(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "r"
    cli("train", "--data", small_data, "--out", out, *FLAGS)
    return out


@pytest.fixture(scope="module")
def images(sample_manifest, tmp_path_factory) -> Path:
    """A folder of four real images."""
    folder = tmp_path_factory.mktemp("imgs") / "images"
    folder.mkdir()
    for p in sample_manifest["path"].iloc[:4]:
        shutil.copyfile(SAMPLE / p, folder / Path(p).name)
    return folder


@pytest.fixture(scope="module")
def tab_run(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tab") / "tab"
    cli("tabular", "--data", small_data, "--out", out, *TAB_FLAGS)
    return out


def _files(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def _one_line_error(r, *needles: str) -> None:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output, r.output
    for n in needles:
        assert n in r.output, r.output


# ------------------------------------------------------------------ 1. explain --overwrite


def test_explain_overwrite_replaces_only_an_earlier_explain_output(run_dir, images, tmp_path):
    victim = tmp_path / "finished-run"
    shutil.copytree(run_dir, victim)
    before = _files(victim)
    r = cli("explain", run_dir, images, "--out", victim, "--overwrite", ok=False)
    _one_line_error(r, str(victim), "not an earlier explain output")
    assert _files(victim) == before

    own = tmp_path / "mine"
    own.mkdir()
    (own / "notes.txt").write_text("mine")
    r = cli("explain", run_dir, images, "--out", own, "--overwrite", ok=False)
    _one_line_error(r, str(own), "not an earlier explain output")
    assert (own / "notes.txt").read_text() == "mine"

    out = tmp_path / "cams"
    cli("explain", run_dir, images, "--out", out)
    cli("explain", run_dir, images, "--out", out, "--overwrite", "--method", "gradcam++")
    assert "gradcam++ of" in (out / "index.html").read_text()
    (out / "notes.txt").write_text("added by the user")  # no longer explain's output alone
    r = cli("explain", run_dir, images, "--out", out, "--overwrite", ok=False)
    _one_line_error(r, "not an earlier explain output")
    assert (out / "notes.txt").exists()


# ------------------------------------------------------------------ 2. overlay names


def test_explain_overlay_names_are_unique_short_and_safe_per_id(run_dir, sample_manifest, tmp_path):
    ids = ["case 1", "case_1", "case/1", "case?1", "CASE_1", "x" * 300]
    folder = tmp_path / "src"
    (folder / "images").mkdir(parents=True)
    rows = []
    for k, (i, p) in enumerate(zip(ids, sample_manifest["path"])):
        # every image its own size, so that each overlay can be traced back to its image
        Image.open(SAMPLE / p).convert("RGB").resize((40 + 4 * k, 30 + 2 * k)).save(folder / "images" / f"{k}.png")
        rows.append({"path": f"images/{k}.png", "id": i})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    out = tmp_path / "cams"
    cli("explain", run_dir, folder / "manifest.csv", "--out", out)
    index = pd.read_csv(out / "index.csv", dtype={"id": str}, keep_default_na=False)
    assert sorted(index["id"]) == sorted(ids)
    assert index["overlay"].nunique() == len(ids)
    assert len({p.name.lower() for p in (out / "overlays").iterdir()}) == len(ids)  # case-insensitive filesystems too
    for k, i in enumerate(ids):
        row = index[index["id"] == i].iloc[0]
        name = Path(row["overlay"]).name
        assert len(name.encode()) <= 120 and re.fullmatch(r"[A-Za-z0-9_.-]+", name), name
        assert Image.open(out / row["overlay"]).size == (40 + 4 * k, 30 + 2 * k) == (row["width"], row["height"])


# ------------------------------------------------------------------ 5. YAML alias bombs, whole values in messages


def _bomb(levels: int, key: str = "epochs") -> str:
    lines = [f"{key}:", "  - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_its_value_is_built(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb(5))  # 9**5 leaves: far past the limit, small enough to be safe without it
    r = cli("train", bomb, "--out", tmp_path / "run", ok=False)
    _one_line_error(r, str(bomb), "alias")
    assert len(r.output) < 400
    search = tmp_path / "search.yaml"
    search.write_text(_bomb(5, "objective") + "space:\n  lr: *a5\n")
    r = cli("tune", search, "--data", "d", "--out", tmp_path / "t", ok=False)
    _one_line_error(r, "alias")
    assert len(r.output) < 400
    loop = tmp_path / "loop.yaml"
    loop.write_text("epochs: &a [*a]\n")
    r = cli("train", loop, "--out", tmp_path / "run", ok=False)
    _one_line_error(r, str(loop))
    # a few anchors, as people use them, still load
    from lesionlab.config import load_yaml

    ok = tmp_path / "ok.yaml"
    ok.write_text("base: &b {epochs: 2, lr: 0.001}\nexperiments: [*b, *b, *b]\n")
    assert load_yaml(ok)["experiments"] == [{"epochs": 2, "lr": 0.001}] * 3


def test_an_error_message_never_holds_a_whole_value(tmp_path):
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump({"space": {"lr": list(range(20000))}}))
    r = cli("tune", search, "--data", "d", "--out", tmp_path / "t", ok=False)
    _one_line_error(r, "space.lr", "expected a mapping")
    assert len(r.output) < 400
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": {"k": "v" * 100000}}))
    r = cli("train", cfg, "--out", tmp_path / "run", ok=False)
    _one_line_error(r, "'name'")
    assert len(r.output) < 400


# ------------------------------------------------------------------ 6. workers of a killed parent




@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("command", ["cv", "tune"])
def test_local_workers_end_with_their_killed_parent(command, small_data, tmp_path):
    if command == "cv":
        args = ["cv", "--data", str(small_data), "--out", str(tmp_path / "cv"), "--folds", "2", "--workers", "2",
                "--epochs", "200", "--n-malignant", "10", "--num-threads", "1"]
    else:
        search = tmp_path / "search.yaml"
        search.write_text(yaml.safe_dump({**TUNE_SEARCH, "base": {"epochs": 200, "n_malignant": 10, "num_threads": 1}}))
        args = ["tune", str(search), "--data", str(small_data), "--out", str(tmp_path / "tune"), "--trials", "4",
                "--workers", "2"]
    import lesionlab

    src = Path(lesionlab.__file__).resolve().parents[1]  # the lesionlab under test
    proc = subprocess.Popen([sys.executable, "-m", "lesionlab", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(src)})
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        workers = child_pids(proc.pid)
    assert len(workers) == 2, f"{command} started no workers"
    time.sleep(2)  # the workers are running (importing, then training)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while any(is_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if is_running(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"{command} workers {left} outlived their killed parent"


# ------------------------------------------------------------------ 7, 8. tampered and damaged model files


@pytest.fixture(scope="module")
def onnx_file(run_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    cli("export", run_dir, "--out", path, "--verify", "8")
    return path


def _retag(src: Path, dst: Path, value: str) -> Path:
    import onnx

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    props["lesionlab"] = value
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.save(model, str(dst))
    return dst


def _meta_with(onnx_file: Path, **changes) -> str:
    import onnx

    meta = json.loads({p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}["lesionlab"])
    for k, v in changes.items():
        if v is ...:
            meta.pop(k)
        else:
            meta[k] = v
    return json.dumps(meta)


@pytest.mark.parametrize("case,needle", [
    ("bad json", "not valid JSON"), ("a list", "expected a JSON object"), ("no size", "'size'"),
    ("size 64", "'size' 64 does not match the graph's input (32 px)"),
    ("size 100000", "'size' must be a whole number of pixels from 1 to 8192, got 100000"),
    ("size text", "'size' must be"), ("size true", "'size' must be"),
    ("fit 5", "'fit' must be"), ("fit zoom", "'fit' must be"),
    ("threshold text", "'threshold' must be"), ("threshold 7", "'threshold' must be"),
    ("threshold nan", "'threshold' must be"), ("threshold list", "'threshold' must be"),
])
def test_tampered_onnx_metadata_is_refused_before_use(onnx_file, images, tmp_path, case, needle):
    values = {"bad json": '{"size": 32, "fit": ', "a list": "[32, 32]", "no size": _meta_with(onnx_file, size=...),
              "size 64": _meta_with(onnx_file, size=64), "size 100000": _meta_with(onnx_file, size=100000),
              "size text": _meta_with(onnx_file, size="32"), "size true": _meta_with(onnx_file, size=True),
              "fit 5": _meta_with(onnx_file, fit=5), "fit zoom": _meta_with(onnx_file, fit="zoom"),
              "threshold text": _meta_with(onnx_file, threshold="high"),
              "threshold 7": _meta_with(onnx_file, threshold=7),
              "threshold nan": _meta_with(onnx_file, threshold=float("nan")),
              "threshold list": _meta_with(onnx_file, threshold=[0.5])}
    model = _retag(onnx_file, tmp_path / "tampered.onnx", values[case])
    r = cli("predict", model, images, "--out", tmp_path / "p.csv", "--engine", "onnxruntime", "--workers", "1",
            ok=False)
    _one_line_error(r, str(model), needle)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("damage,needle", [
    ("fold cut", "model/fold-0.txt"), ("fold junk", "model/fold-0.txt"), ("fold gone", "model/fold-0.txt"),
    ("spec cut", "model/model.json"), ("spec list", "model/model.json"), ("spec keys", "model/model.json"),
    ("spec folds", "model/model.json"),
])
def test_a_damaged_tabular_model_is_named(tab_run, small_data, tmp_path, damage, needle):
    run = tmp_path / "run"
    shutil.copytree(tab_run, run)
    fold, spec = run / "model" / "fold-0.txt", run / "model" / "model.json"
    doc = json.loads(spec.read_text())
    if damage == "fold cut":
        fold.write_bytes(fold.read_bytes()[: fold.stat().st_size // 2])
    elif damage == "fold junk":
        fold.write_bytes(b"\x00\x01 not a model")
    elif damage == "fold gone":
        fold.unlink()
    elif damage == "spec cut":
        spec.write_text(spec.read_text()[:50])
    elif damage == "spec list":
        spec.write_text("[]")
    elif damage == "spec keys":
        spec.write_text(json.dumps({k: v for k, v in doc.items() if k != "features"}))
    else:
        spec.write_text(json.dumps({**doc, "n_folds": "three"}))
    r = cli("predict", run, small_data.parent / "raw" / "manifest.csv", "--out", tmp_path / "p.csv", ok=False)
    _one_line_error(r, needle)
    assert not (tmp_path / "p.csv").exists()


# ------------------------------------------------------------------ 9. report over a damaged run


def test_report_skips_and_names_a_damaged_run(run_dir, tmp_path):
    runs = tmp_path / "runs"
    for name in ("good", "cut", "list"):
        shutil.copytree(run_dir, runs / name)
    metrics = runs / "cut" / "metrics.json"
    metrics.write_bytes(metrics.read_bytes()[:40])
    (runs / "list" / "run.json").write_text("[]")
    r = cli("report", runs, "--out", tmp_path / "report")
    assert "2 damaged run(s) skipped" in r.output and str(runs / "cut") in r.output and str(runs / "list") in r.output
    md = (tmp_path / "report" / "report.md").read_text()
    assert "1 run(s)" in md and "cut" in md and "list" in md and "skipped" in md


# ------------------------------------------------------------------ 10. read-only locations


def _ro_commands(ro, small_data, run_dir, images, tmp_path, sample_manifest):
    manifest = copy_subset(subset(sample_manifest, 3, 6), tmp_path / "raw")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"out": str(ro / "sweep"), "data": str(small_data),
                                     "base": {"epochs": 1, "n_malignant": 10}, "experiments": [{"name": "a"}]}))
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump(TUNE_SEARCH))
    return {
        "prepare": ("prepare", manifest, "--out", ro / "data", "--size", "16", "--workers", "1"),
        "split": ("split", ro / "data-copy", "--name", "x", "--val", "5:20", "--test", "5:20"),
        "train": ("train", "--data", small_data, "--out", ro / "run", *FLAGS),
        "cv": ("cv", "--data", small_data, "--out", ro / "cv", "--folds", "2", *FLAGS),
        "ensemble": ("ensemble", run_dir, "--out", ro / "ens", "--n-boot", "10"),
        "tabular": ("tabular", "--data", small_data, "--out", ro / "tab", *TAB_FLAGS),
        "sweep": ("sweep", sweep),
        "report": ("report", run_dir, "--out", ro / "report"),
        "predict": ("predict", run_dir, images, "--out", ro / "p.csv", "--workers", "1"),
        "explain": ("explain", run_dir, images, "--out", ro / "cams"),
        "export": ("export", run_dir, "--out", ro / "m.onnx", "--verify", "4"),
        "pretrain": ("pretrain", small_data, "--out", ro / "enc", "--epochs", "1"),
        "tune": ("tune", search, "--data", small_data, "--out", ro / "tune", "--trials", "1"),
        "compare": ("compare", run_dir, run_dir, "--json", ro / "c.json", "--n-boot", "10"),
        "augment-preview": ("augment-preview", small_data, "--out", ro / "a.png"),
        "synth import": ("synth", "import", images, "--out", ro / "syn"),
        "demo": ("demo", "--out", ro / "demo", "--epochs", "1"),
    }


@pytest.mark.parametrize("command", ["prepare", "split", "train", "cv", "ensemble", "tabular", "sweep", "report",
                                     "predict", "explain", "export", "pretrain", "tune", "compare", "augment-preview",
                                     "synth import", "demo"])
def test_every_command_says_it_cannot_write_to_a_read_only_location(command, small_data, run_dir, images, tmp_path,
                                                                      sample_manifest, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copytree(small_data, ro / "data-copy")
    args = _ro_commands(ro, small_data, run_dir, images, tmp_path, sample_manifest)[command]
    _make_read_only(ro, monkeypatch)
    r = cli(*args, ok=False)
    assert "Traceback" not in r.output
    assert re.search(rf"cannot write to {re.escape(str(ro))}\S*: read-only file system", r.output), r.output
    assert r.exit_code != 0


def _make_read_only(root: Path, monkeypatch, code: int = errno.EROFS) -> None:
    """Make `root` behave as a read-only mount: every write under it fails with EROFS (or `code`), as
    on a real one (tests may run as root, which chmod does not stop)."""
    prefix = str(root)

    def under(path) -> bool:
        if isinstance(path, int):
            return False
        try:
            p = os.path.abspath(os.fsdecode(path))
        except TypeError:
            return False
        return p == prefix or p.startswith(prefix + os.sep)

    def guard(real, n=1, write=lambda *a, **k: True):
        def wrapped(*args, **kwargs):
            hit = next((a for a in args[:n] if under(a)), None)
            if hit is not None and "dir_fd" not in kwargs and write(*args, **kwargs):
                raise OSError(code, os.strerror(code), os.fsdecode(hit))
            return real(*args, **kwargs)
        return wrapped

    def opens_for_writing(file, mode="r", *a, **k):
        return any(c in mode for c in "wax+")

    def os_open_writes(path, flags, *a, **k):
        return bool(flags & _WRITE_FLAGS)

    monkeypatch.setattr(builtins, "open", guard(builtins.open, 1, opens_for_writing))
    monkeypatch.setattr(io, "open", guard(io.open, 1, opens_for_writing))
    monkeypatch.setattr(os, "open", guard(os.open, 1, os_open_writes))
    for name, n in (("mkdir", 1), ("rmdir", 1), ("unlink", 1), ("remove", 1), ("replace", 2), ("rename", 2),
                    ("symlink", 2), ("link", 2), ("chmod", 1), ("utime", 1), ("truncate", 1)):
        monkeypatch.setattr(os, name, guard(getattr(os, name), n))


def test_a_folder_that_refuses_writes_is_named(run_dir, images, small_data, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    _make_read_only(locked, monkeypatch, errno.EACCES)  # what chmod 555 gives a user other than root
    for args in (("predict", run_dir, images, "--out", locked / "p.csv", "--workers", "1"),
                 ("explain", run_dir, images, "--out", locked / "cams"),
                 ("train", "--data", small_data, "--out", locked / "run", *FLAGS)):
        r = cli(*args, ok=False)
        _one_line_error(r, f"cannot write to {locked}: permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")
def test_a_folder_without_write_permission_is_named(run_dir, images, small_data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for args in (("predict", run_dir, images, "--out", locked / "p.csv"),
                     ("explain", run_dir, images, "--out", locked / "cams"),
                     ("train", "--data", small_data, "--out", locked / "run", *FLAGS)):
            r = cli(*args, ok=False)
            _one_line_error(r, f"cannot write to {locked}: permission denied")
    finally:
        locked.chmod(0o755)


# ------------------------------------------------------------------ 11. a long --out


def test_a_legal_245_byte_out_works(run_dir, images, tmp_path):
    from lesionlab.fileio import atomic_path, staged_dir

    name = "n" * 245
    cli("predict", run_dir, images, "--out", tmp_path / f"{name[:241]}.csv", "--workers", "1")
    cli("predict", run_dir, images, "--out", tmp_path / ("é" * 120 + "x.csv"), "--workers", "1")  # 245 bytes
    cli("explain", run_dir, images, "--out", tmp_path / name)
    cli("explain", run_dir, images, "--out", tmp_path / name, "--overwrite")
    with staged_dir(tmp_path / ("r" * 245)) as staging:
        (staging / "a").write_text("a")
    with atomic_path(tmp_path / ("f" * 245)) as tmp:
        tmp.write_text("f")
    assert (tmp_path / ("r" * 245) / "a").exists() and (tmp_path / ("f" * 245)).read_text() == "f"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".replaced-" in p.name or p.suffix == ".tmp"]


# ------------------------------------------------------------------ 12. --out that is a folder, --out .


def test_predict_and_export_refuse_an_existing_folder_as_the_output_file(run_dir, images, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    for args in (("predict", run_dir, images), ("export", run_dir)):
        r = cli(*args, "--out", folder, "--overwrite", ok=False)
        _one_line_error(r, f"{folder}: is a folder")
    assert _files(folder) == [("keep.txt", 4)]


def test_explain_out_dot_overwrite_leaves_nothing_hidden_behind(run_dir, images, tmp_path, monkeypatch):
    out = tmp_path / "cams"
    cli("explain", run_dir, images, "--out", out)
    monkeypatch.chdir(out)
    cli("explain", run_dir, images, "--out", ".", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["index.csv", "index.html", "overlays"]
    assert not [p for p in tmp_path.iterdir() if ".replaced-" in p.name or ".partial-" in p.name]


# ------------------------------------------------------------------ 13. numbers and files checked


@pytest.mark.parametrize("case", ["predict batch 0", "predict batch -3", "explain batch 0", "ensemble batch 0",
                                  "export verify -5", "export verify 0", "compare n-boot 0", "tabular features empty",
                                  "cv task-count 0", "cv task-index -1", "sweep task-count 0", "binary config"])
def test_bad_numbers_and_files_are_refused_by_name(case, run_dir, images, small_data, tmp_path):
    binary = tmp_path / "config.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "experiments": [{"name": "a"}]}))
    out = tmp_path / "out"
    args, needle = {
        "predict batch 0": (("predict", run_dir, images, "--out", out, "--batch-size", "0"), "--batch-size"),
        "predict batch -3": (("predict", run_dir, images, "--out", out, "--batch-size", "-3"), "--batch-size"),
        "explain batch 0": (("explain", run_dir, images, "--out", out, "--batch-size", "0"), "--batch-size"),
        "ensemble batch 0": (("ensemble", run_dir, "--out", out, "--batch-size", "0"), "--batch-size"),
        "export verify -5": (("export", run_dir, "--out", out, "--verify", "-5"), "--verify"),
        "export verify 0": (("export", run_dir, "--out", out, "--verify", "0"), "--verify"),
        "compare n-boot 0": (("compare", run_dir, run_dir, "--n-boot", "0"), "--n-boot"),
        "tabular features empty": (("tabular", "--data", small_data, "--out", out, "--features", ""), "--features"),
        "cv task-count 0": (("cv", "--data", small_data, "--out", out, "--task-count", "0", "--task-index", "0"),
                            "--task-count"),
        "cv task-index -1": (("cv", "--data", small_data, "--out", out, "--task-count", "2", "--task-index", "-1"),
                             "--task-index"),
        "sweep task-count 0": (("sweep", sweep, "--task-count", "0", "--task-index", "0"), "--task-count"),
        "binary config": (("train", binary, "--out", out), f"{binary}: not a text file"),
    }[case]
    r = cli(*args, ok=False)
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
    assert not out.exists()


# ------------------------------------------------------------------ 14. explain / export of a tabular run


def test_explain_and_export_of_a_tabular_run_say_it_has_no_image_model(tab_run, images, tmp_path):
    r = cli("explain", tab_run, images, "--out", tmp_path / "cams", ok=False)
    _one_line_error(r, f"{tab_run}: a tabular run", "no image model")
    r = cli("export", tab_run, "--out", tmp_path / "m.onnx", ok=False)
    _one_line_error(r, f"{tab_run}: a tabular run", "no image model")
    assert not (tmp_path / "cams").exists() and not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------ export of TTA runs and logit-mean ensembles


@pytest.fixture(scope="module")
def tta_run(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tta") / "d4"
    cli("train", "--data", small_data, "--out", out, "--tta", "d4", "--seed", "1", *FLAGS)
    return out


def _random_images(n=16, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_tta_run_exports_with_its_views_in_the_graph(tta_run, tmp_path, fmt):
    from lesionlab.runs import load_predictor
    from lesionlab.workflows.export import _exported_probabilities

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    path = tmp_path / f"m.{'onnx' if fmt == 'onnx' else 'pt'}"
    r = cli("export", tta_run, "--format", fmt, "--out", path, "--verify", "16")
    assert "max |difference| to torch" in r.output
    images = _random_images()
    predictor = load_predictor(tta_run, "cpu")
    assert predictor.tta == "d4"
    got = _exported_probabilities(path, fmt, images)
    assert np.abs(got - predictor.probabilities(images)).max() <= 1e-4
    predictor.set_tta("none")  # the views matter: without them the scores differ
    assert np.abs(got - predictor.probabilities(images)).max() > 1e-4


def test_an_ensemble_with_tta_and_a_logit_mean_exports(run_dir, tta_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from lesionlab.runs import load_predictor
    from lesionlab.workflows.export import _exported_probabilities

    ens = tmp_path / "ens"
    cli("ensemble", run_dir, tta_run, "--out", ens, "--tta", "flip", "--mean", "logit", "--n-boot", "10")
    path = tmp_path / "ens.onnx"
    cli("export", ens, "--out", path, "--verify", "16")
    images = _random_images()
    predictor = load_predictor(ens, "cpu")
    got = _exported_probabilities(path, "onnx", images)
    assert np.abs(got - predictor.probabilities(images)).max() <= 1e-4
    meta = json.loads(__import__("onnxruntime").InferenceSession(str(path)).get_modelmeta()
                      .custom_metadata_map["lesionlab"])
    assert meta["tta"] == "flip" and "logit" in meta["combine"]


# ------------------------------------------------------------------ metadata columns, transparency, skips, onnx, progress


def test_tabular_says_how_many_values_of_a_numeric_column_were_not_numbers(small_data, tmp_path):
    raw = small_data.parent / "raw"
    manifest = pd.read_csv(raw / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.loc[3, "age"] = "abc"
    manifest["path"] = [str(raw / p) for p in manifest["path"]]
    (tmp_path / "m").mkdir()
    manifest.to_csv(tmp_path / "m" / "manifest.csv", index=False)
    data = tmp_path / "data"
    cli("prepare", tmp_path / "m" / "manifest.csv", "--out", data, "--size", "16", "--workers", "1")
    cli("split", data, "--val", "10:40", "--test", "10:40")
    r = cli("tabular", "--data", data, "--out", tmp_path / "tab", *TAB_FLAGS)
    assert "age: 1 value(s) not a number ('abc'), read as missing" in r.output
    info = json.loads((tmp_path / "tab" / "run.json").read_text())
    assert info["features"]["not_numbers"] == {"age": {"count": 1, "examples": ["abc"]}}
    spec = json.loads((tmp_path / "tab" / "model" / "model.json").read_text())["features"]
    assert spec["kinds"]["age"] == "numeric"


def test_predict_skip_bad_names_what_it_skipped(run_dir, images, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(images, folder)
    for i in range(5):
        (folder / f"bad{i}.jpg").write_bytes(b"not an image" if i else b"")
    out = tmp_path / "preds.csv"
    r = cli("predict", run_dir, folder, "--out", out, "--skip-bad", "--workers", "1")
    assert "5 unreadable skipped: bad0, bad1, bad2, ... (2 more)" in r.output, r.output
    listing = tmp_path / "preds.skipped.csv"
    assert str(listing) in r.output
    skipped = pd.read_csv(listing)
    assert sorted(skipped["id"]) == [f"bad{i}" for i in range(5)] and skipped["reason"].str.len().min() > 0
    assert len(pd.read_csv(out)) == 4


def test_export_without_onnx_says_how_to_install_it(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` fails as when it is not installed
    r = cli("export", run_dir, "--out", tmp_path / "m.onnx", ok=False)
    _one_line_error(r, "pip install 'lesionlab[export]'")
    assert "does not export" not in r.output and not (tmp_path / "m.onnx").exists()


def test_progress_in_a_log_is_a_line_now_and_then_not_carriage_returns(sample_manifest, tmp_path):
    manifest = copy_subset(subset(sample_manifest, 4, 12), tmp_path / "raw")
    r = cli("prepare", manifest, "--out", tmp_path / "data", "--size", "16", "--workers", "1")
    assert "\r" not in r.output
    assert "prepare: 16/16 img" in r.output
