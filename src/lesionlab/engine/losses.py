"""Training losses on logits: BCE (optionally with pos_weight and label smoothing) and focal loss.

Validation and test losses are always plain BCE, so runs with different training losses stay
comparable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import LOSSES
from ..errors import BadInputError


class TrainingLoss(nn.Module):
    def __init__(self, kind: str = "bce", pos_weight: float | None = None, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, label_smoothing: float = 0.0):
        super().__init__()
        if kind not in LOSSES:
            raise BadInputError(f"--loss must be one of {', '.join(LOSSES)}, got '{kind}'")
        if pos_weight is not None and pos_weight <= 0:
            raise BadInputError(f"--pos-weight must be > 0 (or 'auto'), got {pos_weight}")
        if focal_gamma < 0:
            raise BadInputError(f"--focal-gamma must be >= 0, got {focal_gamma}")
        if not 0 <= focal_alpha <= 1:
            raise BadInputError(f"--focal-alpha must lie in [0, 1], got {focal_alpha}")
        if not 0 <= label_smoothing < 0.5:
            raise BadInputError(f"--label-smoothing must lie in [0, 0.5), got {label_smoothing}")
        if kind == "focal" and pos_weight is not None:
            raise BadInputError("--pos-weight applies to --loss bce; focal loss weights the classes with --focal-alpha")
        self.kind, self.alpha, self.gamma, self.smoothing = kind, focal_alpha, focal_gamma, label_smoothing
        self.register_buffer("pos_weight", torch.tensor(pos_weight) if pos_weight is not None else None)

    pos_weight: torch.Tensor | None  # a buffer (moves with the module)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        soft = target * (1 - self.smoothing) + 0.5 * self.smoothing if self.smoothing else target
        if self.kind == "bce":
            return F.binary_cross_entropy_with_logits(logits, soft, pos_weight=self.pos_weight)
        # focal loss (Lin et al. 2017): alpha_t (1 - p_t)^gamma * BCE, p_t the probability of the true class
        bce = F.binary_cross_entropy_with_logits(logits, soft, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        alpha_t = self.alpha * target + (1 - self.alpha) * (1 - target)
        return (alpha_t * (1 - p_t).pow(self.gamma) * bce).mean()
