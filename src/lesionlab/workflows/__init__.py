"""The command workflows: one module per command (train, cv, sweep, ensemble, compare, predict,
explain, export, tune, pretrain, report, demo) plus the ONNX predictor that export writes for and
predict reads. Each takes validated settings and writes or reads run folders through runs/; the
command line (cli.py) only parses flags and prints. The feature packages keep their own commands
(audit/command.py, tabular/command.py, synth/)."""
