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


NEAR_COPY_RULE = "closer to a real training image than 99% of real images are to their nearest other real image"


def near_copy_cut(p_real: np.ndarray) -> float:
    """The near-copy distance (pixel vectors of pixels()): see near_copy_cut_of."""
    return near_copy_cut_of(nearest(p_real, p_real, exclude_self=True)[0])


def near_copy_cut_of(d_rr: np.ndarray) -> float:
    """NEAR_COPY_RULE's distance from each real image's distance to its nearest other real image: their 1%
    quantile."""
    return float(np.quantile(d_rr, 0.01))
