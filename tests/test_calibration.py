"""Calibration: ECE and Brier against hand-computed cases, maps fitted on validation only, and a
run that calibrates and prior-shifts, read back by its predictor."""

import numpy as np
import pytest

from conftest import RUN_FLAGS as FLAGS  # the tiny runs' flags, one list for every file
from conftest import cli
from lesionlab.calibration import (
    apply_calibration,
    brier_score,
    ece_brier_resampled,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    isotonic_segments,
    nll,
    reliability,
)
from lesionlab.errors import BadInputError
from lesionlab.metrics import bootstrap_ci, compute_metrics, stratified_resamples


def test_brier_by_hand():
    # (0.9-1)^2 + (0.2-0)^2 + (0.6-1)^2 + (0.0-0)^2 = 0.01 + 0.04 + 0.16 + 0 = 0.21; / 4
    assert brier_score([1, 0, 1, 0], [0.9, 0.2, 0.6, 0.0]) == pytest.approx(0.0525)
    assert brier_score([1, 0], [1.0, 0.0]) == 0.0


def test_ece_by_hand():
    y = np.array([1, 0, 0, 1, 1, 0])
    p = np.array([0.05, 0.05, 0.35, 0.35, 0.95, 0.85])
    # 10 bins: bin 0 {0.05, 0.05}: rate 1/2, mean 0.05 -> |0.45| x 2/6
    #          bin 3 {0.35, 0.35}: rate 1/2, mean 0.35 -> |0.15| x 2/6
    #          bin 8 {0.85}: rate 0, mean 0.85 -> 0.85 x 1/6;  bin 9 {0.95}: rate 1 -> 0.05 x 1/6
    expected = (0.45 * 2 + 0.15 * 2 + 0.85 + 0.05) / 6
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(expected)
    # a perfectly calibrated case: in each bin the rate equals the probability
    assert expected_calibration_error([1, 0, 0, 0], [0.25] * 4, n_bins=10) == pytest.approx(0.0)
    # 0 and 1 fall in the first and last bins; 0.1 sits on a bin edge and belongs to the lower bin
    assert expected_calibration_error([0, 1, 0], [0.0, 1.0, 0.1], n_bins=10) == pytest.approx(0.1 / 3)


def test_reliability_bins_and_zoom():
    r = reliability([0, 1, 0, 1], [0.1, 0.15, 0.9, 0.95], n_bins=2)
    assert r["count"].tolist() == [2, 2]
    assert r["observed"].tolist() == [0.5, 0.5]
    assert r["mean_prob"] == pytest.approx([0.125, 0.925])
    z = reliability([0, 1, 1], [0.01, 0.04, 0.5], n_bins=5, upper=0.05)  # 0.5 goes to the last bin
    assert z["count"].sum() == 3 and z["bin_center"][-1] == pytest.approx(0.045)


def test_metrics_and_bootstrap_carry_ece_and_brier():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(300)].astype(int)
    p = np.clip(rng.beta(2, 5, len(y)) + 0.3 * y, 0, 1)
    m = compute_metrics(y, p, 0.5)
    assert m["ece"] == pytest.approx(expected_calibration_error(y, p)) and m["brier"] == pytest.approx(brier_score(y, p))
    ci = bootstrap_ci(y, p, 0.5, n_boot=200, seed=1)
    assert ci["ece"][0] <= m["ece"] <= ci["ece"][1] and ci["brier"][0] <= m["brier"] <= ci["brier"][1]
    idx = stratified_resamples(y, 25, 3)
    fast = ece_brier_resampled(y, p, idx)
    slow_ece = [expected_calibration_error(y[i], p[i]) for i in idx]
    slow_brier = [brier_score(y[i], p[i]) for i in idx]
    assert fast["ece"] == pytest.approx(slow_ece) and fast["brier"] == pytest.approx(slow_brier)


def _overconfident(n=4000, scale=4.0, seed=0, centre=-1.0):
    """Labels drawn from sigmoid(z); the model reports scale x z, so it is over-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(centre, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return scale * z, y


def test_temperature_scaling_lowers_validation_nll_of_an_overconfident_model():
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert t == pytest.approx(4.0, rel=0.1)
    assert nll(y, logits / t) < nll(y, logits) - 0.1
    cal = fit_calibration("temperature", logits, y, train_prevalence=float(y.mean()))
    assert cal["offset"] == pytest.approx(0.0)
    assert cal["val_nll_calibrated"] < cal["val_nll_model"]
    held_out, y2 = _overconfident(seed=1)
    p = apply_calibration(held_out, cal)
    assert expected_calibration_error(y2, p) < 0.5 * expected_calibration_error(y2, 1 / (1 + np.exp(-held_out)))


def test_calibration_takes_out_the_known_prevalence_difference():
    # a model trained on a 1:2 draw (33% malignant) reports its odds at that prevalence, not validation's
    logits, y = _overconfident(scale=1.0, seed=2, centre=-3.5)
    val = y.mean()
    assert val < 0.1
    shifted = logits + np.log((1 / 3) / (2 / 3)) - np.log(val / (1 - val))
    cal = fit_calibration("temperature", shifted, y, train_prevalence=1 / 3)
    assert cal["temperature"] == pytest.approx(1.0, abs=0.3)
    assert cal["val_nll_calibrated"] < cal["val_nll_model"] - 0.05
    assert cal["prevalence"] == pytest.approx(y.mean())


def test_isotonic_is_monotone_and_its_graph_form_matches_numpy():
    logits, y = _overconfident()
    cal = fit_calibration("isotonic", logits, y, train_prevalence=float(y.mean()))
    z = np.linspace(-20, 20, 401)
    p = apply_calibration(z, cal)
    assert np.all(np.diff(p) >= 0) and 0 <= p.min() and p.max() <= 1
    assert cal["val_nll_calibrated"] < cal["val_nll_model"]
    seg = isotonic_segments(z, cal["x"], cal["y"])
    assert np.abs(seg - p).max() < 1e-9
    import torch

    seg_t = isotonic_segments(torch.tensor(z), cal["x"], cal["y"]).numpy()
    assert np.abs(seg_t - p).max() < 1e-9


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibrating_on_a_validation_set_of_one_class_is_refused(method):
    with pytest.raises(BadInputError, match=f"--calibrate {method}: the validation set holds only benign"):
        fit_calibration(method, np.zeros(20), np.zeros(20), 0.3)


def test_a_run_calibrates_on_validation_before_the_prior_shift_and_its_predictor_repeats_it(small_data, tmp_path):
    from lesionlab.data.store import Store
    from lesionlab.metrics import prior_shift
    from lesionlab.runs import Run, load_predictor

    out = tmp_path / "cal"
    cli("train", "--data", small_data, "--out", out, "--calibrate", "temperature", "--prevalence", "1%", *FLAGS)
    run = Run.load(out)
    cal = run.info["calibration"]
    assert cal["method"] == "temperature" and cal["fitted_on"] == "val" and cal["prevalence"] == pytest.approx(10 / 50)
    assert run.config["calibrate"] == "temperature"
    assert run.info["prevalence"]["calibrated_at"] == pytest.approx(0.2)
    preds = run.predictions("test")
    expected = prior_shift(apply_calibration(np.log(preds["prob_model"] / (1 - preds["prob_model"])), cal), 0.2, 0.01)
    assert np.abs(preds["prob"].to_numpy() - expected).max() < 1e-4  # prob_model is written to 6 digits
    for side in ("val", "test"):
        assert {"ece", "brier"} <= set(run.metrics[side]) and "ece" in run.metrics[side]["ci95"]
    store = Store.open(small_data)
    pos = store.table.reset_index(drop=True).reset_index().set_index("id").loc[preds["id"], "index"].to_numpy()
    predictor = load_predictor(out, device="cpu")
    assert predictor.calibration["temperature"] == pytest.approx(cal["temperature"])
    assert np.abs(predictor.probabilities(store.pixels(pos)) - preds["prob"].to_numpy()).max() < 1e-4
    assert (out / "figures" / "reliability.png").stat().st_size > 1000


def test_calibration_refuses_a_one_class_validation_set(small_data, tmp_path):
    """The fit needs both classes; train never gets that far (a one-class validation set is refused
    when the split is made and again when a run starts), so the guard is checked on its own."""
    from lesionlab.calibration import check_two_classes

    with pytest.raises(BadInputError, match="--calibrate isotonic: the validation set holds only benign images"):
        check_two_classes(np.zeros(40), "isotonic")
    r = cli("split", small_data, "--val", "0:40", "--test", "10:40", "--name", "oneclass", ok=False)
    assert r.exit_code == 2 and "validation set has 0 malignant" in r.output
    assert not (small_data / "split-oneclass.json").exists()
