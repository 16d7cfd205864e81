"""The report as a reader sees it: one self-contained page with a forest plot of the experiments,
calibration, the CAM gallery, and tables that fit; checked in headless Chromium where present."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli

FLAGS = ["--epochs", "1", "--batch-size", "16", "--n-malignant", "10", "--bootstrap", "20", "--num-threads", "1"]
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_report.py"
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
