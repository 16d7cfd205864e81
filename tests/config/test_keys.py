"""One source for config keys: the search's fixed keys, the bare-flag values and a mapping's flags
all read the config model's fields (config/keys.py)."""
from __future__ import annotations

import pytest

from lesionlab.config import ExperimentConfig, build_config


def test_fixed_keys_come_from_the_fields():
    from lesionlab.config.keys import fixed_keys
    from lesionlab.workflows.tune import FIXED

    assert set(FIXED) == set(fixed_keys(ExperimentConfig))
    assert {"data", "split", "device", "synthetic", "bootstrap"} <= set(FIXED) and "lr" not in FIXED


@pytest.mark.parametrize("key", ["synthetic", "device"])
def test_search_refuses_a_fixed_key(tmp_path, key):
    from lesionlab.errors import BadInputError
    from lesionlab.workflows.tune import load_search

    search = tmp_path / "search.yaml"
    search.write_text(f"space:\n  {key}:\n    type: choice\n    values: [a, b]\n")
    with pytest.raises(BadInputError, match=f"space.{key}: cannot be searched"):
        load_search(search, "DATA")


def test_bare_values_and_mapping_flags_from_the_fields():
    from lesionlab.config import PretrainConfig
    from lesionlab.config.keys import bare_values, flag_name

    assert bare_values(ExperimentConfig) == {"pretrained": "true", "ema": "0.999"}
    assert bare_values(PretrainConfig) == {"pretrained": "true"}
    assert flag_name("synthetic.data", ExperimentConfig) == "--synthetic"
    assert flag_name("synthetic.n", ExperimentConfig) == "--synthetic-n"
    assert flag_name("batch_size", ExperimentConfig) == "--batch-size"
    assert build_config({"ema": True}).ema == 0.999  # a bare-flag key takes true for its bare value


def test_flags_read_the_metadata():
    """--ema and --pretrained given bare, and the synthetic mapping's two flags, as the CLI parses them."""
    import click

    from lesionlab.cli import main
    from lesionlab.cli.options import given

    def parsed(command: str, args: list[str]) -> dict:
        return given({k: v for k, v in main.commands[command].make_context(command, args).params.items()
                      if k not in ("config_file", "out", "seeds", "data_dir", "fresh")})

    assert parsed("train", ["--out", "r", "--ema", "--pretrained", "--synthetic", "S", "--synthetic-n", "3"]) == \
        {"ema": "0.999", "pretrained": "true", "synthetic": {"data": "S", "n": 3}}
    assert parsed("train", ["--out", "r", "--ema", "0.9", "--pretrained", "W.pth"]) == {"ema": "0.9", "pretrained": "W.pth"}
    assert parsed("pretrain", ["D", "--out", "e", "--pretrained"]) == {"pretrained": "true"}
    with pytest.raises(click.UsageError, match="--synthetic-n needs --synthetic"):
        parsed("train", ["--out", "r", "--synthetic-n", "3"])
