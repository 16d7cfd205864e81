"""The training loop's options come from the experiment config: no default of their own."""
from __future__ import annotations

from dataclasses import MISSING, fields

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
