"""Are the synthetic images any good, and are they copies? FID and KID against the real training
images (with two halves of the real images as the yardstick), precision/recall and density/
coverage in feature space, and nearest-neighbour distances in feature and pixel space."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC to size x size (area when shrinking, bilinear when enlarging)."""
    if images.shape[1] == size:
        return np.ascontiguousarray(images)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    mode = "area" if images.shape[1] > size else "bilinear"
    x = F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous().numpy()


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets; the trace of the matrix
    square root comes from the eigenvalues of sqrt(Sa) Sb sqrt(Sa), which are real and >= 0."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root_a @ sb @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance: unbiased MMD^2 with the cubic polynomial kernel, mean and sd over subsets."""
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
               - 2 * kxy.mean())
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))


def nearest(a: np.ndarray, b: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each row of a to its nearest row of b, and that row's index."""
    d = _pairwise(a, b)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    idx = d.argmin(1)
    return d[np.arange(len(a)), idx], idx


def manifold_scores(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020) with k-NN balls."""
    r_radius = np.sort(_pairwise(real, real), axis=1)[:, k]  # column 0 is the point itself
    f_radius = np.sort(_pairwise(fake, fake), axis=1)[:, k]
    d_rf = _pairwise(real, fake)  # real x fake
    inside_real = d_rf <= r_radius[:, None]  # fake j inside the ball of real i
    inside_fake = d_rf <= f_radius[None, :]  # real i inside the ball of fake j
    return {"precision": float(inside_real.any(0).mean()), "recall": float(inside_fake.any(1).mean()),
            "density": float(inside_real.sum() / (k * len(fake))), "coverage": float(inside_real.any(1).mean())}


def pixels(images: np.ndarray, side: int = 32) -> np.ndarray:
    """Pixel-space vectors: the image at side x side, in [0, 1]."""
    return resize(images, side).reshape(len(images), -1).astype(np.float64) / 255.0


def nn_distance_z(train: np.ndarray, held_out: np.ndarray, generated: np.ndarray,
                  held_groups: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0) -> float:
    """Meehan et al.'s Z_U: the Mann-Whitney U of the generated images' distances to their nearest training
    image against the held-out real images' distances, as a z score under the null of equal distributions. Far
    below 0: the generated images sit closer to the training images than new real images do (data copying);
    above 0: farther (underfitting). See distance_z for the held_groups."""
    return distance_z(nearest(generated, train)[0], nearest(held_out, train)[0], held_groups, n_boot, seed)


def other_group_nearest(train: np.ndarray, groups: np.ndarray, rows: int = 1024) -> np.ndarray:
    """Distance from each training image to its nearest training image of another group (leave one group out).

    Why: a training image measured against the training images of the other groups stands where a new real image
    of the distribution stands against the training set (one group fewer), so these distances are a reference
    for the data-copying test that needs no held-out image; leaving out the whole group (the lesion's other
    pictures) keeps a near-duplicate from passing for a close new image. In blocks of `rows`, so memory stays
    bounded on a large class."""
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2:
        raise ValueError("leave-one-group-out distances need training images of at least two groups")
    out = np.empty(len(train))
    for start in range(0, len(train), rows):
        d = _pairwise(train[start:start + rows], train)
        d[groups[start:start + rows, None] == groups[None, :]] = np.inf
        out[start:start + rows] = d.min(1)
    return out


def distance_z(d_gen: np.ndarray, d_held: np.ndarray, held_groups: np.ndarray | None = None, n_boot: int = 1000,
               seed: int = 0) -> float:
    """Z_U from the two sets of nearest-training-image distances (nn_distance_z).

    Without groups, the paper's normal approximation (continuous distances have no ties). With `held_groups`
    (patients or lesions, several images each), held-out images are not independent and that approximation is
    too sure of itself; the z score is then U / (m n) - 1/2 over its standard deviation across resamples of
    whole held-out groups (and of the generated images), as every interval in lesionlab resamples groups."""
    from scipy.stats import mannwhitneyu

    m, n = len(d_gen), len(d_held)
    if held_groups is None:
        u = mannwhitneyu(d_gen, d_held, alternative="less", method="asymptotic").statistic  # U of the generated
        return float((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))
    from ..metrics import grouped_resamples

    held_draws = grouped_resamples(np.zeros(n), held_groups, n_boot, seed)  # one stratum: every image is of the class
    rng = np.random.default_rng(seed + 1)  # the generated images' draws, a stream apart from the groups'

    def share_farther(gen: np.ndarray, held: np.ndarray) -> float:  # U / (m n): P(generated farther than held out)
        held = np.sort(held)
        return float((np.searchsorted(held, gen, side="left") + np.searchsorted(held, gen, side="right")).mean()
                     / (2 * len(held)))

    shares = [share_farther(d_gen[rng.integers(0, m, m)], d_held[rows]) for rows in held_draws]
    sd = float(np.std(shares, ddof=1))
    excess = share_farther(d_gen, d_held) - 0.5
    # every resample alike (exact copies, say) leaves sd 0: past +-99 the answer no longer changes, and a finite
    # number keeps check.json plain JSON
    return float(np.clip(excess / sd, -99, 99)) if sd > 0 else float(np.sign(excess) * 99)


# a one-sided test at 5%: stricter than the paper's "far below 0", so that no generator is cleared on a lenient cut
COPYING_ALPHA = 0.05


class CopyingReference:
    """The half of the data-copying test (data_copying) that does not depend on the generated images: the k-means
    cells of the training images and the reference images' distances to their nearest training image, overall and
    in each cell. Built once per training set, so a watch that tests the samples of many stops against one
    training set (copy_watch.CopyWatch) clusters it and measures its reference once; test() then takes a batch of
    generated images. Arguments as data_copying's."""

    def __init__(self, train: np.ndarray, held_out: np.ndarray | None, seed: int = 0, per_cell: int = 20,
                 max_cells: int = 10, held_groups: np.ndarray | None = None, train_groups: np.ndarray | None = None):
        from sklearn.cluster import KMeans

        self.train, self.seed, self.per_cell, self.loo = train, seed, per_cell, held_out is None
        loo_groups = np.arange(len(train)) if train_groups is None else np.asarray(train_groups)
        if held_out is None:
            held_out, held_groups = train, train_groups  # the reference images are the training images, with their groups
        self.n_held = len(held_out)
        self.held_groups = None if held_groups is None else np.asarray(held_groups)
        k = max(1, min(max_cells, len(held_out) // per_cell, len(train) // per_cell))
        while True:
            self.km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(train)
            self.cell_train = self.km.labels_
            cell_held = self.cell_train if self.loo else self.km.predict(held_out)
            self.held_counts = np.bincount(cell_held, minlength=k)
            # a cell of one group has no leave-one-group-out reference
            one_group = self.loo and any(len(np.unique(loo_groups[self.cell_train == c])) < 2 for c in range(k))
            if k == 1 or (self.held_counts.min() >= 5 and not one_group):
                break
            k -= 1
        self.k = k

        def reference(in_train: np.ndarray, in_held: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            """The reference images' distances to the training images `in_train`, and their groups."""
            t = train[in_train]
            d = other_group_nearest(t, loo_groups[in_train]) if self.loo else nearest(held_out[in_held], t)[0]
            return d, None if self.held_groups is None else self.held_groups[in_held]

        self.overall = reference(np.ones(len(train), bool), np.ones(len(held_out), bool))
        self.cells = [reference(self.cell_train == c, cell_held == c) for c in range(k)]

    def test(self, generated: np.ndarray) -> dict:
        """The test of `generated` against this reference (data_copying's result)."""
        from scipy.stats import norm

        def z_of(in_train: np.ndarray, gen: np.ndarray, ref: tuple[np.ndarray, np.ndarray | None]) -> float:
            return distance_z(nearest(gen, self.train[in_train])[0], ref[0], ref[1], seed=self.seed)

        cell_gen = self.km.predict(generated)
        z_cells, weights = [], []
        for c in range(self.k):
            gen_c = generated[cell_gen == c]
            if len(gen_c) < min(self.per_cell, len(generated)):
                continue  # too few generated images to test: the cell is left out, as in the paper
            z_cells.append(z_of(self.cell_train == c, gen_c, self.cells[c]))
            weights.append(self.held_counts[c] / self.n_held)
        c_t = float(np.dot(weights, z_cells) / np.sum(weights)) if z_cells else None
        z_u = z_of(np.ones(len(self.train), bool), generated, self.overall)
        # copying is found when Z_U or C_T falls below the one-sided 5% point, or one cell below its Bonferroni cut
        # (an average can hide a copying cell behind an underfitting one)
        cut = float(norm.ppf(COPYING_ALPHA))
        cell_cut = float(norm.ppf(COPYING_ALPHA / max(len(z_cells), 1)))
        worst = float(min(z_cells)) if z_cells else None
        in_cells = c_t is not None and worst is not None and (c_t < cut or worst < cell_cut)
        return {"z_u": z_u, "c_t": c_t, "cells": int(self.k), "cells_tested": len(z_cells), "worst_cell_z": worst,
                "cut": cut, "cell_cut": cell_cut,
                "n_train": int(len(self.train)), "n_held_out": int(self.n_held), "n_generated": int(len(generated)),
                "reference": "the training images, leave one group out" if self.loo else "held-out images",
                "held_out_groups": None if self.held_groups is None else int(len(np.unique(self.held_groups))),
                "copying": bool(z_u < cut or in_cells)}


def data_copying(train: np.ndarray, held_out: np.ndarray | None, generated: np.ndarray, seed: int = 0,
                 per_cell: int = 20, max_cells: int = 10, held_groups: np.ndarray | None = None,
                 train_groups: np.ndarray | None = None) -> dict:
    """The data-copying test of Meehan, Chaudhuri and Dasgupta (AISTATS 2020, "A Non-Parametric Test to
    Detect Data-Copying in Generative Models"): do generated images lie closer to the training images than
    real images the generator never saw? Unlike a fixed near-copy cut, it compares with new real images, so a
    sample near a 'hub' training image (one plain crop that many images are close to) counts only as much as a
    new real image near it would.

    z_u: nn_distance_z on all images. c_t: the same within k-means cells of the training images (copying can
    hide in one region while another underfits), averaged with the held-out images' share of each cell as
    weight, over the cells holding at least `per_cell` generated images (the paper's tau); k starts at one cell
    per `per_cell` held-out images (up to `max_cells`) and shrinks until every cell holds 5 held-out images,
    the fewest a rank test in a cell can stand on. held_groups: see nn_distance_z.
    held_out None: no held-out images; the training images themselves, each against the training images of the
    other groups (other_group_nearest, `train_groups`; every image its own group when None), are the new real
    images the generated ones are compared with, in every cell as in all.
    Written here because no maintained library ships it; the paper's reference code is the model."""
    return CopyingReference(train, held_out, seed, per_cell, max_cells, held_groups, train_groups).test(generated)


NEAR_COPY_RULE = "closer to a real training image than 99% of real images are to their nearest other real image"


def near_copy_cut(p_real: np.ndarray) -> float:
    """The near-copy distance (pixel vectors of pixels()): see near_copy_cut_of."""
    return near_copy_cut_of(nearest(p_real, p_real, exclude_self=True)[0])


def near_copy_cut_of(d_rr: np.ndarray) -> float:
    """NEAR_COPY_RULE's distance from each real image's distance to its nearest other real image: their 1%
    quantile."""
    return float(np.quantile(d_rr, 0.01))
