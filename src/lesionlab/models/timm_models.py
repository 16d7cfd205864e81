"""timm backbones in the registry, with ImageNet weights from the Hugging Face hub or a local file."""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

from torch import nn

from ..errors import BadInputError
from ..fileio import load_checkpoint, sha256_file

# small backbones that train in minutes on a CPU at 128 px; any other timm name works as "timm:NAME"
BACKBONES = {
    "resnet18": "ResNet-18 (11.2M parameters)",
    "efficientnet_b0": "EfficientNet-B0 (4.0M parameters)",
    "convnextv2_nano": "ConvNeXt-V2 nano (15.0M parameters)",
    "mobilenetv3_small_100": "MobileNetV3-small (1.5M parameters)",
    "tf_efficientnet_lite0": "EfficientNet-Lite0 (3.4M parameters; ImageNet weights offline with lesionlab[weights])",
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


# where a model's ImageNet weights came from and the preprocessing they expect (set by create_timm)
SOURCE_ATTR = "lesionlab_weights"


def _cfg_preprocessing(model: nn.Module, source: str, trained_at: int | None = None):
    """The preprocessing of timm's pretrained config for this architecture (mean, std, interpolation)."""
    from ..choices import INTERPOLATIONS
    from ..engine.runtime import Preprocessing

    cfg = getattr(model, "pretrained_cfg", None) or {}
    interpolation = cfg.get("interpolation", "bilinear")
    return Preprocessing(tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225))),
                         interpolation if interpolation in INTERPOLATIONS else "bilinear", 0, source), \
        trained_at or int((cfg.get("input_size") or (3, 0, 0))[-1])


def _hub_file(model: nn.Module) -> dict:
    """The cached file timm loaded hub weights from, with its sha256 (best effort: None when unknown)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    path = None
    with contextlib.suppress(Exception):
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.get("hf_hub_id", ""), filename)
            if isinstance(found, str):
                path = Path(found)
                break
    if path is None and cfg.get("url"):
        with contextlib.suppress(Exception):
            import torch.hub

            candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg["url"]).path).name
            path = candidate if candidate.is_file() else None
    return {"kind": "timm", "hf_hub_id": cfg.get("hf_hub_id"), "file": str(path) if path else None,
            "sha256": sha256_file(path) if path else None}


def zero_classifier(model: nn.Module) -> None:
    """Start a new classifier on pretrained features at zero (as Big Transfer does): timm initialises
    EfficientNet classifiers uniformly in +-1/sqrt(outputs), which for one output logit is +-1 on
    1280 features, logits in the tens, a loss that swamps the pretrained features' first steps."""
    import torch

    head = model.get_submodule(timm_head_name(model))
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()


def _record(model: nn.Module, source: dict, preprocessing, trained_at: int) -> nn.Module:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if source.get("kind") != "package" and model.num_classes and model.num_classes != cfg.get("num_classes", 1000):
        zero_classifier(model)  # timm dropped the ImageNet classifier: the new one starts at zero
    setattr(model, SOURCE_ATTR, {"source": source, "preprocessing": preprocessing, "trained_at": trained_at})
    return model


def pretrained_source(model: nn.Module) -> dict | None:
    """{"source": where the weights came from (kind, file, sha256, ...), "preprocessing": Preprocessing,
    "trained_at": the side they were trained at}, or None for a model built without ImageNet weights."""
    return getattr(model, SOURCE_ATTR, None)


def _from_package(name: str, package, path: Path, **kwargs) -> nn.Module:
    """A timm model with a registered package's weights: every key but the classifier's must match
    (the classifier too when the model keeps ImageNet's 1000 classes)."""
    import timm

    from ..engine.runtime import Preprocessing
    from .encoder import is_head_key, load_encoder_state
    from .weights import package_state

    state = package_state(package, path)
    model = timm.create_model(name, pretrained=False, **kwargs)
    head = timm_head_name(model)
    own = model.state_dict()
    if all(k in own and own[k].shape == v.shape for k, v in state.items() if is_head_key(k, head)) and \
            all(k in state for k in own if is_head_key(k, head)):
        model.load_state_dict(state, strict=True)  # the ImageNet head fits (num_classes 1000): everything loads
    else:
        load_encoder_state(model, {k: v for k, v in state.items() if not is_head_key(k, head)}, str(path))
        if any(True for _ in model.get_submodule(head).parameters()):
            zero_classifier(model)
    preprocessing = Preprocessing(package.mean, package.std, package.interpolation, 0,
                                  f"{package.distribution} {package.version} ({name} ImageNet weights)")
    return _record(model, package.describe(path), preprocessing, package.trained_at)


def imagenet_backbone(name: str = "tf_efficientnet_lite0", pretrained: bool | str = True, **kwargs):
    """(timm model, Preprocessing, weights source) with ImageNet weights found without a network where
    possible: a local file (`pretrained` = PATH), else timm's cache or hub (when reachable), else an
    installed weights package registered for `name` (models/weights.py). timm keyword arguments pass
    through (default num_classes=0: the pooled features, e.g. a frozen feature network)."""
    kwargs.setdefault("num_classes", 0)
    model = create_timm(name, pretrained=pretrained or True, **kwargs)
    found = pretrained_source(model)
    assert found is not None  # create_timm records where its pretrained weights came from
    return model, found["preprocessing"], found["source"]


def create_timm(name: str, image_size: int = 128, pretrained: bool | str = False, **kwargs) -> nn.Module:
    """A timm model (one output logit unless num_classes says otherwise). pretrained: False, True (found
    offline where possible, see imagenet_backbone) or a path to weights. A pretrained model carries
    where its weights came from and its preprocessing (pretrained_source)."""
    import timm

    if not timm.is_model(name):
        from ..errors import closest

        raise BadInputError(f"unknown timm model '{name}'{closest(name, timm.list_models())}")
    kwargs.setdefault("num_classes", 1)
    if pretrained is False or pretrained is None or pretrained == "":
        return timm.create_model(name, pretrained=False, **kwargs)
    if pretrained is not True:
        path = Path(str(pretrained))
        if not path.is_file():
            raise BadInputError(f"--pretrained {path}: no such weights file")
        state = _local_weights(path)
        try:  # timm still adapts the state dict (drops the 1000-class head, input channels)
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs)
        except (RuntimeError, KeyError, ValueError, OSError) as e:
            raise BadInputError(f"--pretrained {path}: not weights for {name} ({str(e)[:300]})") from None
        preprocessing, trained_at = _cfg_preprocessing(model, f"timm's pretrained config of {name} (weights from a file)")
        return _record(model, {"kind": "file", "file": str(path.resolve()), "sha256": sha256_file(path)},
                       preprocessing, trained_at)
    reachable = _hub_reachable()
    try:
        with (contextlib.nullcontext() if reachable else _hub_offline()):
            model = timm.create_model(name, pretrained=True, **kwargs)
        preprocessing, trained_at = _cfg_preprocessing(model, f"timm's pretrained config of {name}")
        return _record(model, _hub_file(model), preprocessing, trained_at)
    except Exception as e:  # hub and cache errors come in many types
        where = "the Hugging Face hub did not answer and no copy is cached locally" if not reachable else \
            f"the download failed ({str(e)[:200]})"
    from .weights import no_weights_message, package_file, package_for

    package = package_for(name)
    package_path = package_file(package) if package is not None else None
    if package is None or package_path is None:
        raise BadInputError(no_weights_message(name, where))
    return _from_package(name, package, package_path, **kwargs)


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
    classifier = cast(Any, model).get_classifier() if hasattr(model, "get_classifier") else None  # timm's own method
    modules = dict(model.named_modules())
    if name and name in modules:
        return name
    for key, module in modules.items():  # models whose config does not name it
        if classifier is not None and module is classifier and key:
            return key
    raise BadInputError(f"timm model {type(model).__name__}: cannot tell which layer is its classifier")


def timm_features(model: nn.Module, x):
    """(N, D): the pooled features that feed the classifier (timm's pre-logits)."""
    timm_model = cast(Any, model)  # timm's own methods (nn.Module types its attributes Tensor | Module)
    return timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
