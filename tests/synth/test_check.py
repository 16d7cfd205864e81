"""The measures of `lesionlab synth check` (synth/check.py): FID against scipy, KID, precision and recall of
the manifolds, the data-copying test, the real set it compares with."""
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


def test_nn_distance_z_by_hand():
    # distances to the one training point: generated 2, 4; held out 1, 3. U of the generated sample counts the
    # pairs where it is farther: (2,1), (4,1), (4,3) = 3; under the null U has mean 2*2/2 and sd sqrt(2*2*5/12)
    z = quality.nn_distance_z(np.zeros((1, 1)), np.array([[1.0], [3.0]]), np.array([[2.0], [4.0]]))
    assert z == pytest.approx((3 - 2) / np.sqrt(20 / 12))


def _cloud(rng, n, centre=0.0):
    return rng.normal(centre, 1.0, size=(n, 8))


def test_data_copying_finds_copies_and_clears_new_draws():
    rng = np.random.default_rng(3)
    train, held = _cloud(rng, 200), _cloud(rng, 100)
    copies = quality.data_copying(train, held, train[rng.integers(0, 200, 400)] + rng.normal(0, 0.01, (400, 8)))
    assert copies["copying"] and copies["z_u"] < -10 and copies["c_t"] < -5
    assert copies["cells"] == 5 and copies["n_held_out"] == 100  # one cell per 20 held-out images
    fresh = quality.data_copying(train, held, _cloud(rng, 400))
    assert not fresh["copying"] and abs(fresh["z_u"]) < 3
    blurred = quality.data_copying(train, held, _cloud(rng, 400) * 2)  # spread wider than the data: underfitting
    assert not blurred["copying"] and blurred["z_u"] > 3


def test_data_copying_in_one_cell_is_not_hidden_by_underfitting_in_another():
    """Copies of one cluster and far-off images in the other: Z_U and the average C_T cancel out, the copying
    cell falls below its Bonferroni cut."""
    rng = np.random.default_rng(4)
    train = np.concatenate([_cloud(rng, 100), _cloud(rng, 100, 50.0)])
    held = np.concatenate([_cloud(rng, 50), _cloud(rng, 50, 50.0)])
    generated = np.concatenate([train[:100] + rng.normal(0, 0.01, (100, 8)), _cloud(rng, 100, 50.0) * 1.0 + rng.normal(0, 3, (100, 8))])
    r = quality.data_copying(train, held, generated, per_cell=50)
    assert r["cells"] == r["cells_tested"] == 2
    assert r["z_u"] > r["cut"] and r["c_t"] > r["cut"]
    assert r["worst_cell_z"] < r["cell_cut"] and r["copying"]


def test_data_copying_with_too_few_generated_images_for_any_cell_tests_them_all_at_once():
    from lesionlab.synth.check import copying_text

    rng = np.random.default_rng(7)
    train, held = _cloud(rng, 200), _cloud(rng, 100)
    r = quality.data_copying(train, held, np.concatenate([_cloud(rng, 5), _cloud(rng, 5, 50.0)]))
    assert r["cells"] == 5 and r["cells_tested"] == 0 and r["c_t"] is None and r["worst_cell_z"] is None
    assert r["z_u"] > 0 and not r["copying"]  # the far-off half makes them lie farther than new images
    assert "C_T n/a over 0 of 5 cell(s), worst cell n/a" in copying_text({"pixel": r, "feature": r}, "malignant")


def test_grouped_z_matches_the_normal_approximation_for_single_image_groups():
    rng = np.random.default_rng(5)
    train, held, gen = _cloud(rng, 200), _cloud(rng, 150), _cloud(rng, 300) * 1.1
    plain = quality.nn_distance_z(train, held, gen)
    grouped = quality.nn_distance_z(train, held, gen, held_groups=np.arange(150), n_boot=2000)
    assert plain > 2 and grouped == pytest.approx(plain, rel=0.15)


def test_grouped_z_is_not_fooled_by_many_images_of_one_patient():
    """Held-out images in 15 groups of 8 near-identical ones, generated images drawn as new: the normal
    approximation takes 120 images for 120 independent ones and calls copying or underfitting far more often
    than 5% of the time; resampling whole groups keeps near the nominal rate."""
    rng = np.random.default_rng(6)
    plain, grouped = [], []
    for _ in range(40):
        train = _cloud(rng, 150)
        held = np.repeat(_cloud(rng, 15), 8, axis=0) + rng.normal(0, 0.05, (120, 8))
        gen = _cloud(rng, 400)
        plain.append(quality.nn_distance_z(train, held, gen))
        grouped.append(quality.nn_distance_z(train, held, gen, held_groups=np.repeat(np.arange(15), 8), n_boot=300))
    assert np.mean(np.abs(plain) > 1.96) > 0.3
    assert np.mean(np.abs(grouped) > 1.96) < 0.2


def test_other_group_nearest_by_hand():
    # points 0, 1, 1.1, 5 on a line; 1 and 1.1 are one lesion's two pictures
    train = np.array([[0.0], [1.0], [1.1], [5.0]])
    assert quality.other_group_nearest(train, np.array(["a", "b", "b", "c"]), rows=3) == pytest.approx([1, 1, 1.1, 3.9])
    assert quality.other_group_nearest(train, np.arange(4)) == pytest.approx([1, 0.1, 0.1, 3.9])
    with pytest.raises(ValueError, match="at least two groups"):
        quality.other_group_nearest(train, np.zeros(4))


def test_data_copying_against_the_training_images_themselves():
    """No held-out images: each training image against the other groups' stands for a new image. Copies are found,
    new draws cleared, wide draws read as underfitting, and new draws stay near the nominal 5% over repeats."""
    rng = np.random.default_rng(8)
    train = _cloud(rng, 200)
    copies = quality.data_copying(train, None, train[rng.integers(0, 200, 400)] + rng.normal(0, 0.01, (400, 8)))
    assert copies["copying"] and copies["z_u"] < -10 and copies["n_held_out"] == 200
    assert copies["reference"] == "the training images, leave one group out"
    fresh = quality.data_copying(train, None, _cloud(rng, 400))
    assert not fresh["copying"] and abs(fresh["z_u"]) < 3 and fresh["cells"] == 10
    assert quality.data_copying(train, None, _cloud(rng, 400) * 2)["z_u"] > 3
    z = [quality.distance_z(quality.nearest(_cloud(rng, 300), t)[0], quality.other_group_nearest(t, np.arange(150)))
         for t in (_cloud(rng, 150) for _ in range(40))]
    assert np.mean(np.array(z) < -1.64) < 0.15


def test_the_training_reference_needs_the_groups_of_near_duplicates():
    """Training images in 50 lesions of 4 near-identical pictures: left out one by one, each finds its twin, so the
    reference sits far too close and copies of the training images pass; left out by lesion, they are caught."""
    rng = np.random.default_rng(9)
    train = np.repeat(_cloud(rng, 50), 4, axis=0) + rng.normal(0, 0.05, (200, 8))
    lesions = np.repeat(np.arange(50), 4)
    copies = train[rng.integers(0, 200, 300)] + rng.normal(0, 0.1, (300, 8))  # a little farther than a twin
    assert not quality.data_copying(train, None, copies)["copying"]
    grouped = quality.data_copying(train, None, copies, train_groups=lesions)
    assert grouped["copying"] and grouped["held_out_groups"] == 50
    assert not quality.data_copying(train, None, _cloud(rng, 300), train_groups=lesions)["copying"]


def test_n_real_is_the_training_draws_malignant_images(small_data):
    from lesionlab.data.sampling import draw_training_set
    from lesionlab.synth.generator import real_images

    store, positions = real_images(small_data, 1, n_real=20, seed=3)
    labels = store.table["label"].to_numpy()
    draw = draw_training_set(labels, load_split(store).positions(store.table, "train"), "1:2", 20, seed=3)
    assert np.array_equal(np.sort(draw[labels[draw] == 1]), positions)
    with pytest.raises(NotEnoughDataError, match="--n-real 999"):
        real_images(small_data, 1, n_real=999)
