"""The measures of `lesionlab synth check` (synth/check.py): FID against scipy, KID, precision and recall of
the manifolds, the real set it compares with."""
import numpy as np
import pytest

from lesionlab.data.splits import load_split
from lesionlab.errors import NotEnoughDataError
from lesionlab.synth import quality


def test_fid_against_scipy_and_zero_on_identical_sets():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 6)), rng.normal(0.5, 1.3, size=(250, 6))
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert quality.fid(a, b) == pytest.approx(ref, rel=1e-6)
    assert quality.fid(a, a) == pytest.approx(0, abs=1e-6)


def test_kid_is_unbiased_mmd():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 3))
    same = quality.kid(a, rng.normal(size=(400, 3)), subsets=100, subset_size=100)[0]
    shifted = quality.kid(a, rng.normal(1, 1, size=(400, 3)), subsets=100, subset_size=100)[0]
    assert shifted > 0.1 and abs(same) < 0.05 * shifted
    # one subset by hand
    x, y = a[:4], a[4:8] + 1
    k = lambda u, v: (u @ v.T / 3 + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    by_hand = (kxx.sum() - np.trace(kxx)) / 12 + (kyy.sum() - np.trace(kyy)) / 12 - 2 * kxy.mean()
    assert quality.kid(x, y, subsets=1, subset_size=4)[0] == pytest.approx(by_hand)


def test_manifold_scores():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(200, 4))
    # identical sets: every ball of radius "k-th neighbour" holds its centre and k others -> density (k+1)/k
    assert quality.manifold_scores(real, real.copy()) == pytest.approx(
        {"precision": 1.0, "recall": 1.0, "density": 1.2, "coverage": 1.0})
    far = quality.manifold_scores(real, real + 100)
    assert far["precision"] == 0 and far["coverage"] == 0
    collapsed = quality.manifold_scores(real, np.repeat(real[:1], 50, 0))
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.1


def test_n_real_is_the_training_draws_malignant_images(small_data):
    from lesionlab.data.sampling import draw_training_set
    from lesionlab.synth.generator import real_images

    store, positions = real_images(small_data, 1, n_real=20, seed=3)
    labels = store.table["label"].to_numpy()
    draw = draw_training_set(labels, load_split(store).positions(store.table, "train"), "1:2", 20, seed=3)
    assert np.array_equal(np.sort(draw[labels[draw] == 1]), positions)
    with pytest.raises(NotEnoughDataError, match="--n-real 999"):
        real_images(small_data, 1, n_real=999)
