"""A model's encoder: the registry model minus its classifier head.

Each family says where its head is and how to get the features that feed it: the seed CNNs
by `head_name` and `forward_features` (the input of their last Linear layer), timm models by
their pretrained config's classifier name and `forward_head(..., pre_logits=True)`. An encoder
is saved as the model's state dict without the head's keys, so it loads into a fresh model of
the same architecture with the head left as initialised.
"""
from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from ..errors import BadInputError
from .timm_models import timm_features, timm_head_name


def is_timm(model: nn.Module) -> bool:
    return hasattr(model, "forward_head") and hasattr(model, "pretrained_cfg")


def head_name(model: nn.Module) -> str:
    """State-dict prefix of the classifier head (its keys are `<prefix>.weight`, ...)."""
    if hasattr(model, "head_name"):
        return str(model.head_name)
    if is_timm(model):
        return timm_head_name(model)
    raise BadInputError(f"{type(model).__name__}: no encoder/head split is defined for this model family")


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "forward_features") and hasattr(model, "head_name"):
        return cast(Any, model).forward_features(x)  # the model family's own method (hasattr above)
    if is_timm(model):
        return timm_features(model, x)
    raise BadInputError(f"{type(model).__name__}: no encoder/head split is defined for this model family")


def is_head_key(key: str, head: str) -> bool:
    return key == head or key.startswith(head + ".")


class Encoder(nn.Module):
    """Wraps a registry model; forward gives (N, D) features. Its `model` keeps the head, unused."""

    def __init__(self, model: nn.Module, image_size: int):
        super().__init__()
        self.model = model
        self.head = head_name(model)
        self.dim = feature_dim(model, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return features(self.model, x)

    def encoder_state(self) -> dict[str, torch.Tensor]:
        return encoder_state(self.model)


@torch.no_grad()
def feature_dim(model: nn.Module, image_size: int) -> int:
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = features(model, torch.zeros(2, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise BadInputError(f"{type(model).__name__}: its features have shape {tuple(out.shape)}, expected (N, D)")
    return int(out.shape[1])


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights and buffers without the classifier head's, detached on the CPU."""
    head = head_name(model)
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if not is_head_key(k, head)}


def load_encoder_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "encoder") -> int:
    """Load encoder weights into a fresh model, leaving its head as initialised; every encoder
    key must be present with the same shape, and only head keys may be missing. Returns the
    number of tensors loaded."""
    head = head_name(model)
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own or is_head_key(k, head))
    missing = sorted(k for k in own if k not in state and not is_head_key(k, head))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
                  if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if unexpected or missing or mismatched:
        from ..errors import preview

        parts = [f"{label}: {preview(items, 5)}" for label, items in
                 (("unexpected keys", unexpected), ("missing keys", missing), ("shape differs", mismatched)) if items]
        raise BadInputError(f"{source}: its weights do not fit {type(model).__name__} ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)
    return len(state)
