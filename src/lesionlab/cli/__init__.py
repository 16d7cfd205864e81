"""The `lesionlab` command: a thin layer over the library; the only place that prints.

Built on click so that `train` can offer every config key as a flag, generated from the config
model itself (a key added there is a flag here with no second list to keep in step). One module per
command group; importing them registers their commands on `main`:

- group.py: the group and its one-line errors; options.py: flags made from config models;
  output.py: progress and shared result lines;
- data.py: prepare, split, augment-preview;
- training.py: train, cv, sweep, tune, pretrain, tabular;
- evaluation.py: predict, ensemble, compare, report, explain, audit, export;
- synth.py: synth train|sample|import|check;
- demo.py: demo, models.
"""
from . import data, demo, evaluation, synth, training  # noqa: F401 - registers the commands
from .group import main

__all__ = ["main"]
