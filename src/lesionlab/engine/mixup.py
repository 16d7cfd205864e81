"""mixup (Zhang et al., 2018, "mixup: Beyond Empirical Risk Minimization"): each training image is
blended with another image of its batch, and its target with that image's target, by a weight drawn
from Beta(alpha, alpha) per image. Written here rather than taken from timm's Mixup, which assumes
one-hot multi-class targets and mixes whole batches with one weight; ours are single malignant/benign
targets and a weight per image. Deterministic per (seed, epoch), like the augmentation."""
from __future__ import annotations

import numpy as np
import torch


class Mixup:
    def __init__(self, alpha: float, seed: int = 0):
        if alpha < 0:
            raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.rng = np.random.default_rng([seed, 0])

    @property
    def active(self) -> bool:
        return self.alpha > 0

    def set_epoch(self, seed: int, epoch: int) -> None:
        self.rng = np.random.default_rng([seed, epoch])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, mixed float targets); the batch itself when off."""
        if not self.active or len(x) < 2:
            return x, y
        n = len(x)
        lam = torch.as_tensor(self.rng.beta(self.alpha, self.alpha, n), device=x.device)
        other = torch.as_tensor(self.rng.permutation(n), device=x.device)
        lam_x = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        mixed_x = lam_x * x + (1 - lam_x) * x[other]
        yf = y.to(torch.float64)
        mixed_y = (lam * yf + (1 - lam) * yf[other]).to(y.dtype if y.is_floating_point() else torch.float32)
        return mixed_x, mixed_y
