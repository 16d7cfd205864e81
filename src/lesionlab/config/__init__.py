"""The config models: one validated object per command, read from YAML and/or flags.

- experiment.py: train, cv, sweep and tune (ExperimentConfig), saved with every run;
- pretrain.py, tabular.py: their commands' configs;
- commands.py, synth.py: the settings of predict, ensemble, explain and synth's subcommands;
- keys.py: what a key is besides its type (bare-flag value, searchable, a mapping's flags);
- wording.py: every validation error as one line naming the key or flag, what it expects and got;
- base.py: reading a YAML config and validating a model with that wording.

Allowed values come from choices.py.
"""
from .base import load_yaml, validated
from .commands import EnsembleConfig, ExplainConfig, PredictConfig
from .experiment import KEYS, ExperimentConfig, SyntheticConfig, build_config, resolve, to_dict
from .pretrain import PretrainConfig, build_pretrain_config
from .synth import SynthCheckConfig, SynthImportConfig, SynthSampleConfig, SynthTrainConfig
from .tabular import TabularConfig, build_tabular_config

__all__ = ["KEYS", "EnsembleConfig", "ExperimentConfig", "ExplainConfig", "PredictConfig", "PretrainConfig",
           "SynthCheckConfig", "SynthImportConfig", "SynthSampleConfig", "SynthTrainConfig", "SyntheticConfig",
           "TabularConfig", "build_config", "build_pretrain_config", "build_tabular_config", "load_yaml", "resolve",
           "to_dict", "validated"]
