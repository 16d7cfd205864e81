"""timm backbones in the registry, with ImageNet weights from the Hugging Face hub or a local file."""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from torch import nn

from ..errors import BadInputError
from ..fileio import load_checkpoint

# small backbones that train in minutes on a CPU at 128 px; any other timm name works as "timm:NAME"
BACKBONES = {
    "resnet18": "ResNet-18 (11.2M parameters)",
    "efficientnet_b0": "EfficientNet-B0 (4.0M parameters)",
    "convnextv2_nano": "ConvNeXt-V2 nano (15.0M parameters)",
    "mobilenetv3_small_100": "MobileNetV3-small (1.5M parameters)",
}


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline():
    """Let huggingface_hub look in its local cache only (no minute of retries when offline)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _local_weights(path: Path) -> dict:
    """A weights file's state dict, read without running code: safetensors, or torch's weights-only
    unpickler (fileio.load_checkpoint). Not timm's own file loader, whose unpickling depends on the
    timm version. Unwraps the usual {"state_dict": ...} / {"model": ...} checkpoint nesting."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise BadInputError(f"--pretrained {path}: not a readable safetensors file ({str(e)[:200]})") from None
    state = load_checkpoint(path)
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not state or not all(hasattr(v, "shape") for v in state.values()):
        raise BadInputError(f"--pretrained {path}: expected a state dict of tensors (a timm/torch checkpoint)")
    return state


def create_timm(name: str, image_size: int = 128, pretrained: bool | str = False, **kwargs) -> nn.Module:
    """A timm model with one output logit. pretrained: False, True (hub) or a path to weights."""
    import timm

    if not timm.is_model(name):
        from ..errors import closest

        raise BadInputError(f"unknown timm model '{name}'{closest(name, timm.list_models())}")
    if pretrained is False or pretrained is None or pretrained == "":
        return timm.create_model(name, pretrained=False, num_classes=1, **kwargs)
    if pretrained is not True:
        path = Path(str(pretrained))
        if not path.is_file():
            raise BadInputError(f"--pretrained {path}: no such weights file")
        state = _local_weights(path)
        try:  # timm still adapts the state dict (drops the 1000-class head, input channels)
            return timm.create_model(name, pretrained=True, num_classes=1,
                                     pretrained_cfg_overlay={"state_dict": state}, **kwargs)
        except (RuntimeError, KeyError, ValueError, OSError) as e:
            raise BadInputError(f"--pretrained {path}: not weights for {name} ({str(e)[:300]})") from None
    reachable = _hub_reachable()
    try:
        with (contextlib.nullcontext() if reachable else _hub_offline()):
            return timm.create_model(name, pretrained=True, num_classes=1, **kwargs)
    except Exception as e:  # hub and cache errors come in many types
        where = "the Hugging Face hub did not answer" if not reachable else f"the download failed ({str(e)[:200]})"
        raise BadInputError(
            f"pretrained: true for '{name}': {where} and no copy is cached locally; pass a local weights file "
            f"with --pretrained PATH (a timm/torch state dict, .pth or .safetensors), or train from scratch "
            f"with pretrained: false"
        ) from None


def timm_cam_layer(model: nn.Module) -> str | None:
    """The deepest feature stage timm declares (e.g. resnet18 'layer4', efficientnet_b0 'blocks.6',
    convnextv2_nano 'stages.3'), or None when the model declares none."""
    info = getattr(model, "feature_info", None)
    try:
        return str(info[-1]["module"]) if info else None
    except (KeyError, IndexError, TypeError):
        return None


def timm_head_name(model: nn.Module) -> str:
    """The state-dict prefix of a timm model's classifier ('fc', 'classifier', 'head.fc', ...)."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    modules = dict(model.named_modules())
    if name and name in modules:
        return name
    for key, module in modules.items():  # models whose config does not name it
        if classifier is not None and module is classifier and key:
            return key
    raise BadInputError(f"timm model {type(model).__name__}: cannot tell which layer is its classifier")


def timm_features(model: nn.Module, x):
    """(N, D): the pooled features that feed the classifier (timm's pre-logits)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)
