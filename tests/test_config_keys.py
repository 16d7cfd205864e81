"""One source for config keys: the training loop's options, the search's fixed keys, the bare-flag
values and a mapping's flags all read the config model's fields."""
from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from lesionlab.config import ExperimentConfig, build_config

DERIVED = {"pos_weight", "monitor", "patience"}  # resolved from the config, not copied


def test_train_options_take_the_configs_defaults_only():
    """A TrainOptions default written apart from the config's (and free to drift from it) is caught:
    every field named as a config key has no default of its own."""
    from lesionlab.engine.trainer import TrainOptions

    shared = [f for f in fields(TrainOptions) if f.name in ExperimentConfig.model_fields]
    assert len(shared) >= 20
    own = {f.name: f.default for f in shared if f.default is not MISSING}
    assert not own, f"TrainOptions repeats config defaults: {own}"
    defaults = TrainOptions.from_config(ExperimentConfig(), None)
    assert all(getattr(defaults, f.name) == ExperimentConfig.model_fields[f.name].default
               for f in shared if f.name not in DERIVED)


def test_train_options_from_config_carries_every_key():
    from lesionlab.engine.trainer import TrainOptions

    changed = {"epochs": 3, "batch_size": 8, "lr": 0.01, "seed": 7, "optimizer": "sgd", "weight_decay": 0.1,
               "scheduler": "cosine", "warmup_epochs": 0.5, "loss": "focal", "focal_alpha": 0.5, "focal_gamma": 1.0,
               "label_smoothing": 0.1, "augment": "light", "mixup": 0.2, "ema": 0.9, "eval_batch_size": 16,
               "measure_compute": True, "encoder_lr_mult": 0.5, "linear_probe_epochs": 1, "layer_decay": 0.8,
               "batchnorm": "frozen"}
    cfg = build_config(changed)
    opts = TrainOptions.from_config(cfg, None)
    shared = {f.name for f in fields(TrainOptions) if f.name in ExperimentConfig.model_fields} - DERIVED
    assert shared == set(changed)  # a key added to TrainOptions needs a value here that differs from its default
    assert {k: getattr(opts, k) for k in changed} == changed
    # derived: no early stop -> never stops; the monitor is the config's resolved one; pos_weight as resolved
    assert (opts.patience, opts.monitor, opts.pos_weight) == (0, "val_loss", None)
    stopping = TrainOptions.from_config(build_config({"early_stop": "auc", "patience": 3}), 2.5)
    assert (stopping.patience, stopping.monitor, stopping.pos_weight) == (3, "val_roc_auc", 2.5)


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
