"""Every config file the repository ships is a valid config (a README command that runs one must not
fail on a renamed or mistyped key); every search and sweep file is a valid search or sweep."""
from __future__ import annotations

from pathlib import Path

import pytest

from lesionlab.config import build_config, load_yaml
from lesionlab.workflows.sweep import read_sweep
from lesionlab.workflows.tune import load_search

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SEARCHES = sorted((CONFIGS / "search").glob("*.yaml"))
SWEEPS = sorted(CONFIGS.rglob("sweep.yaml"))
RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if p not in SEARCHES and p not in SWEEPS)


def test_the_shipped_files_are_found():
    assert {"recommended.yaml", "scratch.yaml"} <= {p.name for p in RECIPES} and SEARCHES and SWEEPS


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_is_valid(path):
    build_config(load_yaml(path), str(path))


@pytest.mark.parametrize("path", SEARCHES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_search_is_valid(path):
    load_search(path)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_sweep_is_valid(path, tmp_path):
    assert read_sweep(path, data=str(tmp_path), out=str(tmp_path / "runs"))
