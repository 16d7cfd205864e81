"""The report as a reader sees it: one self-contained page with a forest plot of the experiments,
calibration, the CAM gallery, and tables that fit; checked in headless Chromium where present."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import RUN_FLAGS as FLAGS  # the tiny runs' flags, one list for every file
from conftest import cli

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_report.py"
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian: apt-get install chromium); "
                                    "the browser check of the report needs it")


@pytest.fixture(scope="module")
def report(small_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    cli("train", "--data", small_data, "--out", root / "runs" / "base", "--name", "simple_cnn 1:2", "--seeds", "0,1",
        *FLAGS)
    cli("train", "--data", small_data, "--out", root / "runs" / "cal", "--name", "simple_cnn 1:1 temperature-calibrated",
        "--ratio", "1:1", "--calibrate", "temperature", *FLAGS)
    cli("report", root / "runs", "--out", root / "report", "--baseline", "simple_cnn 1:2", "--n-boot", "50")
    return root / "report"


def test_report_page_is_self_contained_and_laid_out(report):
    html = (report / "report.html").read_text()
    md = (report / "report.md").read_text()
    assert html.index("Experiments compared") < html.index("id='summary'")  # the forest plot at the top
    assert "<div class='table-wrap'><table id='summary'>" in html and "position: sticky" in html
    assert "max-width: 100%" in html and "<h2>Calibration</h2>" in html
    assert "Grad-CAM gallery of the test set" in html and "reliability diagram (calibration)" in html
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)  # nothing fetched: opens offline
    assert html.count("data:image/png;base64,") >= 3 * 6 + 2
    assert "## Experiments compared" in md and "## Calibration" in md and "![experiments compared]" in md
    assert (report / "figures" / "experiments_forest.png").stat().st_size > 5000
    assert "temperature" in md.split("## Calibration")[1].split("##")[0]


@needs_chromium
def test_report_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(report / "report.html"), "--screenshot", str(shot)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["ok"] and all(result["checks"].values())
    assert result["images"] >= 20 and result["table"]["rows"] == 2 and result["table"]["right"] <= 1280
    from PIL import Image

    assert Image.open(shot).size[0] == 1280


@needs_chromium
def test_the_browser_check_finds_what_is_wrong(tmp_path):
    page = tmp_path / "bad.html"
    wide = "".join(f"<td style='white-space: nowrap'>{'wide cell ' * 6}{i}</td>" for i in range(20))
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>bad</title></head><body>"
        "<script>console.error('something broke')</script>"
        "<img src='data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=='>"
        "<img src='data:image/png;base64,AAAA' alt='broken'>"
        "<img src='http://127.0.0.1:9/remote.png' alt='remote'>"
        f"<table id='summary'><tr>{wide}</tr></table></body></html>")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(page)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["checks"] == {"no_console_errors": False, "offline": False, "images_decoded": False,
                                "summary_table_visible": False}
    assert any("something broke" in e for e in result["console_errors"])
    assert {i["alt"] for i in result["bad_images"]} == {"broken", "remote"}
    assert result["external_resources"] == ["http://127.0.0.1:9/remote.png"]


def test_the_browser_check_says_when_chromium_is_missing(tmp_path):
    (tmp_path / "r.html").write_text("<!DOCTYPE html><title>r</title>")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "r.html"), "--chromium", "no-such-browser"],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/nonexistent"})
    assert proc.returncode == 2 and "no Chromium found" in proc.stderr


def test_report_shows_cv_and_ensemble_sections(cv_dir, two_runs, tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copytree(cv_dir, root / "cv")
    cli("ensemble", root / "cv", "--out", root / "ens", "--tta", "flip", "--n-boot", "20")
    cli("report", root, "--out", tmp_path / "rep", "--baseline", "cv")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "### cross-validation" in md and "Per fold:" in md and "Out-of-fold 95% bootstrap intervals" in md
    assert "whole lesion\\_id groups" in md and "### ensemble" in md and "test-time augmentation flip" in md
    assert "figures/cv_cv_oof_roc.png" in md and (tmp_path / "rep" / "figures" / "cv_cv_oof_roc.png").exists()
    assert "| ens | 1 | test (lesion\\_id)" in md  # cells are Markdown-escaped


def test_report(pipeline):
    md = (pipeline["report"] / "report.md").read_text()
    html = (pipeline["report"] / "report.html").read_text()
    assert "## Summary" in md and "Test Loss:" in md and "![training curves]" in md
    assert html.count("data:image/png;base64,") >= 4 and "<table>" in html
    assert "src='figures/" not in html  # self-contained
    for img in (pipeline["report"] / "figures").iterdir():
        assert img.stat().st_size > 1000


def test_report_never_writes_over_a_users_folder(pipeline, tmp_path):
    (tmp_path / "mine" / "figures").mkdir(parents=True)
    (tmp_path / "mine" / "figures" / "plot.png").write_bytes(b"mine")
    r = cli("report", pipeline["root"] / "runs", "--out", tmp_path / "mine", ok=False)
    assert r.exit_code == 2 and "did not write" in r.output
    assert (tmp_path / "mine" / "figures" / "plot.png").read_bytes() == b"mine"
    cli("report", pipeline["root"] / "runs", "--out", pipeline["report"])  # its own folder: rebuilt


def test_report_escapes_names_and_paths(pipeline, tmp_path):
    hostile = "<script>alert(1)</script> | *bold* _it_ [link](http://x) `tick` ![img](y)"
    run = tmp_path / "runs" / "run `x` [y]"
    shutil.copytree(pipeline["run"], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.update(name=hostile, model="cnn|evil")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    cli("report", tmp_path / "runs", "--out", tmp_path / "rep", "--title", "# T <b>")
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    for text in (md, html):  # no markup of the user's survives, in either
        assert "<script>" not in text and "<b>" not in text
    assert "[link](" not in md and "`tick`" not in md and " *bold* " not in md and " _it_ " not in md
    assert "# \\# T \\<b\\>" in md
    assert "## \\<script\\>alert(1)\\</script\\> \\| \\*bold\\* \\_it\\_ \\[link\\](http://x) \\`tick\\` \\!\\[img\\](y)" in md
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| experiment |"))
    row = next(line for line in lines if line.startswith("| \\<script"))
    assert row.replace("\\|", "").count("|") == header.count("|")  # the name's | does not add a column
    import re

    assert re.search(r"### seed 0 \(``[^`]*/run `x` \[y\]``\)", md)  # the path as code, fenced past its backticks
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
