"""predict, ensemble, explain and synth take their settings from config models: their flags are made
from the models' fields, and a bad value is refused before any work with the one-line error train's
flags give (the flag, what it expects, what it got), from the CLI and from the library alike."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from lesionlab.cli import main
from lesionlab.errors import BadInputError


@pytest.mark.parametrize("args, message", [
    (["predict", "RUN", "SRC", "--out", "p.csv", "--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["predict", "RUN", "SRC", "--out", "p.csv", "--workers", "-1"], "--workers: expected an integer >= 0, got -1"),
    (["predict", "RUN", "SRC", "--out", "p.csv", "--max-pixels", "0"], "--max-pixels: expected an integer >= 1, got 0"),
    (["ensemble", "A", "B", "--out", "ens", "--n-boot", "-1"], "--n-boot: expected an integer >= 0, got -1"),
    (["ensemble", "A", "--out", "ens", "--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["ensemble", "A", "--out", "ens", "--threshold", "sometimes"], "--threshold must be a number in (0, 1)"),
    (["explain", "RUN", "SRC", "--out", "x", "--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["synth", "train", "DATA", "--out", "g", "--steps", "0"], "--steps: expected an integer >= 1, got 0"),
    (["synth", "train", "DATA", "--out", "g", "--time-budget", "0"], "--time-budget: expected a number > 0 (or nothing), got 0"),
    (["synth", "train", "DATA", "--out", "g", "--sample-every", "0"], "--sample-every: expected an integer >= 1, got 0"),
    (["synth", "sample", "GEN", "--out", "s", "--n", "0"], "--n: expected an integer >= 1, got 0"),
    (["synth", "check", "SYN", "--data", "DATA"], "--features: expected a list of text, got nothing"),
    (["synth", "check", "SYN", "--features", "random"], "--data: expected text, got nothing"),
    (["synth", "check", "SYN", "--data", "DATA", "--features", "random", "--n", "0"], "--n: expected an integer >= 1, got 0"),
])
def test_a_bad_flag_value_is_one_line_naming_the_flag(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.parametrize("command, model", [
    (["predict"], "PredictConfig"), (["ensemble"], "EnsembleConfig"), (["explain"], "ExplainConfig"),
    (["synth", "train"], "SynthTrainConfig"), (["synth", "sample"], "SynthSampleConfig"),
    (["synth", "import"], "SynthImportConfig"), (["synth", "check"], "SynthCheckConfig"),
])
def test_every_setting_is_a_flag(command, model):
    """A field added to the model is a flag of its command with no second list to keep in step."""
    import lesionlab.config as config

    cmd = main
    for name in command:
        cmd = cmd.commands[name]
    flags = {opt for p in cmd.params for opt in p.opts}
    fields = getattr(config, model).model_fields
    assert {"--" + key.replace("_", "-") for key in fields} <= flags
    defaults = {p.name: p.default for p in cmd.params}
    assert all(defaults[key] in (None, ()) for key in fields)  # the model's defaults stand, not a second copy


def test_library_calls_get_the_same_errors(tmp_path):
    from lesionlab.synth.samples import import_folder
    from lesionlab.workflows.ensemble import build_ensemble
    from lesionlab.workflows.predict import predict

    with pytest.raises(BadInputError, match=r"^--mean: expected one of prob, logit, got 'median'"):
        build_ensemble([tmp_path / "a"], tmp_path / "ens", mean="median")
    with pytest.raises(BadInputError, match=r"^--engine: expected one of torch, onnxruntime, got 'tensorrt'"):
        predict(tmp_path / "run", tmp_path / "src", tmp_path / "p.csv", engine="tensorrt")
    with pytest.raises(BadInputError, match=r"^--label: expected one of malignant, benign, got 'both'"):
        import_folder(tmp_path, tmp_path / "syn", label="both")


def test_choices_and_switches_keep_their_flags(tmp_path):
    """The generated flags take what the hand-written ones took: a choice refused by click, a bare switch."""
    result = CliRunner().invoke(main, ["synth", "train", "DATA", "--out", str(tmp_path / "g"), "--size", "48"])
    assert result.exit_code == 2 and "'48' is not one of '32', '64', '128'" in result.output
    result = CliRunner().invoke(main, ["predict", "RUN", "SRC", "--out", str(tmp_path / "p.csv"), "--skip-bad",
                                       "--format", "kaggle"])
    assert result.exit_code == 2 and "--format kaggle: a submission needs a row for every test image" in result.output
