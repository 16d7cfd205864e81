"""Every metric against scikit-learn or a hand-computed case."""
import numpy as np
import pytest
from sklearn import metrics as skm

from lesionlab.errors import BadInputError
from lesionlab.metrics import (
    ThresholdRule,
    average_precision,
    bce_per_sample,
    bootstrap_ci,
    compute_metrics,
    paired_bootstrap,
    pauc_above_tpr,
    precision_at_prevalence,
    prior_shift,
    roc_auc,
    roc_curve,
)


def official_pauc(y, s, min_tpr=0.8):
    """The ISIC 2024 scorer's recipe, written with scikit-learn as the challenge did."""
    v_gt = np.abs(np.asarray(y) - 1)
    v_pred = 1.0 - np.asarray(s)
    max_fpr = abs(1 - min_tpr)
    fpr, tpr, _ = skm.roc_curve(v_gt, v_pred)
    stop = np.searchsorted(fpr, max_fpr, "right")
    x_interp = [fpr[stop - 1], fpr[stop]]
    y_interp = [tpr[stop - 1], tpr[stop]]
    tpr = np.append(tpr[:stop], np.interp(max_fpr, x_interp, y_interp))
    fpr = np.append(fpr[:stop], max_fpr)
    return skm.auc(fpr, tpr)


def cases():
    rng = np.random.default_rng(0)
    for k in range(25):
        n = int(rng.integers(20, 400))
        y = (rng.random(n) < rng.uniform(0.03, 0.5)).astype(int)
        y[0], y[1] = 1, 0
        s = rng.random(n) * 0.5 + y * rng.uniform(0, 0.6)
        if k % 3 == 0:
            s = np.round(s, 1)  # many ties
        if k % 5 == 0:
            s = np.round(s * 3) / 3  # very few distinct scores
        yield y, s


@pytest.mark.parametrize("y,s", list(cases()))
def test_ranking_metrics_match_sklearn(y, s):
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert pauc_above_tpr(y, s) == pytest.approx(official_pauc(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    ref_fpr, ref_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    assert np.allclose(fpr, ref_fpr) and np.allclose(tpr, ref_tpr)


@pytest.mark.parametrize("y,s", list(cases())[:8])
@pytest.mark.parametrize("thr", [0.2, 0.5, 0.77])
def test_threshold_metrics_match_sklearn(y, s, thr):
    m = compute_metrics(y, s, thr)
    pred = (s >= thr).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert m["specificity"] == pytest.approx(tn / (tn + fp))


def test_bce_matches_sklearn_log_loss():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    z = rng.normal(0, 4, 200)
    p = 1 / (1 + np.exp(-z))
    assert bce_per_sample(y, z).mean() == pytest.approx(skm.log_loss(y, p), rel=1e-9)
    assert np.isfinite(bce_per_sample(np.array([1, 0]), np.array([-800.0, 800.0]))).all()


# ---------------------------------------------------------------- pAUC by hand


def test_pauc_perfect_random_and_worst():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert pauc_above_tpr(y, np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])) == pytest.approx(0.2)
    assert pauc_above_tpr(y, np.full(8, 0.5)) == pytest.approx(0.02)  # the diagonal: 0.2^2 / 2
    assert pauc_above_tpr(y, np.array([0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4])) == pytest.approx(0.0)


def test_pauc_hand_computed_staircase():
    # 5 positives, 4 negatives. Descending scores: P P N P P N P N N
    y = np.array([1, 1, 0, 1, 1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    # ROC: TPR reaches 0.8 at FPR 0.25 but rises above it only at FPR 0.5 (to 1.0). The region
    # under the curve and above TPR 0.8 is FPR 0.5..1 at height 0.2: area 0.1
    assert pauc_above_tpr(y, s) == pytest.approx(0.1)


def test_pauc_tie_across_the_cut():
    # one positive tied with one negative at the point where TPR crosses 0.8: the diagonal
    # segment from (FPR 0, TPR 0.75) to (FPR 0.5, TPR 1) crosses 0.8 at FPR 0.1
    y = np.array([1, 1, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.5, 0.5, 0.1])
    # area above 0.8: triangle from FPR 0.1..0.5 rising 0 -> 0.2 (= 0.04) + FPR 0.5..1 at height 0.2 (= 0.1)
    assert pauc_above_tpr(y, s) == pytest.approx(0.14)
    assert pauc_above_tpr(y, s) == pytest.approx(official_pauc(y, s))


def test_one_class_rejected():
    with pytest.raises(ValueError, match="both classes"):
        pauc_above_tpr(np.ones(5), np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.zeros(5), np.linspace(0, 1, 5))


# ---------------------------------------------------------------- bootstrap and thresholds


def test_bootstrap_interval_contains_estimate_and_keeps_classes():
    y, s = list(cases())[4]
    losses = bce_per_sample(y, np.log(s + 1e-9) - np.log(1 - s + 1e-9))
    ci = bootstrap_ci(y, s, 0.5, losses, n_boot=300, seed=0)
    m = compute_metrics(y, s, 0.5)
    for k in ("roc_auc", "average_precision", "pauc_80", "f1", "accuracy"):
        assert ci[k][0] <= m[k] <= ci[k][1], k
    assert ci["threshold"] == [0.5, 0.5]
    assert ci["loss"][0] <= losses.mean() <= ci["loss"][1]
    assert ci == bootstrap_ci(y, s, 0.5, losses, n_boot=300, seed=0)  # seeded


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(50), np.zeros(1000)].astype(int)
    good = rng.normal(0, 1, 1050) + 2.0 * y
    weak = rng.normal(0, 1, 1050) + 0.5 * y
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    res = paired_bootstrap(y, sig(weak), sig(good), 0.5, 0.5, n_boot=300)
    assert res["roc_auc"]["lo"] > 0 and res["average_precision"]["lo"] > 0
    same = paired_bootstrap(y, sig(good), sig(good + rng.normal(0, 0.01, 1050)), 0.5, 0.5, n_boot=300)
    assert same["roc_auc"]["lo"] <= 0 <= same["roc_auc"]["hi"]


def test_paired_bootstrap_per_stratum_averages_the_folds_and_ignores_how_their_scores_are_shifted():
    """Out-of-fold scores of three folds, B = A with each fold's scores shifted by its own amount (as fold models
    calibrated apart would score): within each fold the ranking is A's, so per fold B - A is exactly 0; pooled,
    the shift mixes the folds' malignant and benign images and B loses."""
    rng = np.random.default_rng(4)
    y = (rng.random(1500) < 0.15).astype(int)
    folds = np.repeat([0, 1, 2], 500)
    logit = rng.normal(0, 1, 1500) + 1.5 * y
    a = 1 / (1 + np.exp(-logit))
    b = 1 / (1 + np.exp(-(logit + np.array([0.0, 2.0, -2.0])[folds])))
    res = paired_bootstrap(y, a, b, 0.5, 0.5, metrics=("roc_auc", "pauc_80"), n_boot=200, strata=folds)
    per_fold = [skm.roc_auc_score(y[folds == f], a[folds == f]) for f in range(3)]
    assert res["roc_auc"]["a"] == pytest.approx(np.mean(per_fold)) and res["roc_auc"]["a"] != pytest.approx(skm.roc_auc_score(y, a))
    for m in ("roc_auc", "pauc_80"):
        assert res[m]["diff"] == 0 and res[m]["lo"] == 0 == res[m]["hi"], m
    pooled = paired_bootstrap(y, a, b, 0.5, 0.5, metrics=("roc_auc",), n_boot=200)
    assert pooled["roc_auc"]["hi"] < 0
    # without strata the result is the pooled one, resampled as before (the same seed gives the same interval)
    assert pooled == paired_bootstrap(y, a, b, 0.5, 0.5, metrics=("roc_auc",), n_boot=200, strata=None)


def test_threshold_rules():
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert ThresholdRule.parse("0.5").choose(y, s) == 0.5
    t = ThresholdRule.parse("val-f1").choose(y, s)
    assert 0.4 < t <= 0.5 and compute_metrics(y, s, t)["f1"] == pytest.approx(6 / 7)
    t90 = ThresholdRule.parse("sens:0.9").choose(y, s)
    assert compute_metrics(y, s, t90)["recall"] == 1.0 and t90 > 0.4
    t60 = ThresholdRule.parse("sens:0.6").choose(y, s)
    assert compute_metrics(y, s, t60)["recall"] == pytest.approx(2 / 3) and 0.6 < t60 < 0.7
    assert str(ThresholdRule.parse("sens:0.95")) == "sens:0.95"
    for bad in ("sens:1.2", "sens:0", "abc", "1.5"):
        with pytest.raises(BadInputError, match="--threshold"):
            ThresholdRule.parse(bad)


def test_grouped_interval_is_wider_when_a_lesion_has_several_near_identical_images():
    rng = np.random.default_rng(0)
    n_lesions, per = 150, 6
    y_lesion = (rng.random(n_lesions) < 0.25).astype(int)
    score_lesion = rng.normal(0, 1, n_lesions) + 1.0 * y_lesion
    y = np.repeat(y_lesion, per)
    s = np.repeat(score_lesion, per) + rng.normal(0, 0.01, n_lesions * per)  # near-identical images
    groups = np.repeat(np.arange(n_lesions), per).astype(str)
    flat = bootstrap_ci(y, s, 0.5, n_boot=400, seed=0)
    grouped = bootstrap_ci(y, s, 0.5, n_boot=400, seed=0, groups=groups)
    for k in ("roc_auc", "average_precision", "pauc_80", "f1"):
        assert grouped[k][1] - grouped[k][0] > 1.5 * (flat[k][1] - flat[k][0]), k
    # singleton groups are the per-image bootstrap again (in distribution)
    single = bootstrap_ci(y, s, 0.5, n_boot=400, seed=0, groups=np.arange(len(y)).astype(str))
    assert abs((single["roc_auc"][1] - single["roc_auc"][0]) - (flat["roc_auc"][1] - flat["roc_auc"][0])) < 0.01
    d_flat = paired_bootstrap(y, s, s + rng.normal(0, 0.3, len(s)), 0.5, 0.5, ("roc_auc",), n_boot=300)
    d_grp = paired_bootstrap(y, s, s + rng.normal(0, 0.3, len(s)), 0.5, 0.5, ("roc_auc",), n_boot=300, groups=groups)
    assert d_grp["roc_auc"]["hi"] - d_grp["roc_auc"]["lo"] > d_flat["roc_auc"]["hi"] - d_flat["roc_auc"]["lo"]


def test_prior_shift_by_hand():
    # trained at 1/3 malignant, deployed at 1/21: odds scale by (1/20) / (1/2) = 0.1
    p = np.array([0.5, 0.9])
    shifted = prior_shift(p, 1 / 3, 1 / 21)
    assert shifted[0] == pytest.approx(0.1 / 1.1) and shifted[1] == pytest.approx(0.9 / (0.9 + 1.0))
    assert np.allclose(prior_shift(shifted, 1 / 21, 1 / 3), p)


def test_expected_precision_at_prevalence():
    # sensitivity 0.8, specificity 0.9 at 5%: 0.04 / (0.04 + 0.095)
    assert precision_at_prevalence(0.8, 0.9, 0.05) == pytest.approx(0.04 / 0.135)
    assert precision_at_prevalence(0.8, 0.9, 0.00098) < 0.01
