"""A model registry in the manner of timm: `create_model(name, image_size=...)`.

Every model maps a (N, 3, H, W) float batch to (N, 1) logits of 'malignant'. Each family also
names its class-activation (Grad-CAM) target layer: the last layer with a spatial output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Union

from torch import nn

from ..errors import BadInputError, closest
from .seed_cnns import SimpleCNN, UpgradedCNN
from .timm_models import BACKBONES, create_timm, imagenet_backbone, timm_cam_layer  # noqa: F401 - imagenet_backbone: API


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[..., nn.Module]
    description: str
    fixed_size: bool = False  # True when the architecture only accepts its training size
    channels_last: bool = True  # faster memory format on this model (measured per model)
    pretrainable: bool = False  # accepts pretrained=True or a weights path
    defaults: dict = field(default_factory=dict)
    # Grad-CAM target: a dotted module path, or a function of the built model returning one (None: unknown)
    cam_layer: Union[str, Callable[[nn.Module], "str | None"], None] = None

    def cam_layer_of(self, model: nn.Module) -> str | None:
        return self.cam_layer(model) if callable(self.cam_layer) else self.cam_layer


_REGISTRY: dict[str, ModelSpec] = {
    # channels_last measured slower for simple_cnn on CPU (49 vs 61 img/s), faster for upgraded_cnn (40 vs 27)
    "simple_cnn": ModelSpec(SimpleCNN, "the seed study's SimpleCNN (one conv block, 33.6M-parameter head)",
                            fixed_size=True, channels_last=False, cam_layer="relu1"),
    "upgraded_cnn": ModelSpec(UpgradedCNN, "the seed study's UpgradedCNN (four conv blocks, GAP, dropout)",
                              cam_layer=UpgradedCNN.CAM_LAYER),
}


def _timm_spec(name: str, description: str) -> ModelSpec:
    return ModelSpec(partial(create_timm, name), description, pretrainable=True, cam_layer=timm_cam_layer)


for _name, _description in BACKBONES.items():
    _REGISTRY[_name] = _timm_spec(_name, f"timm {_description}")


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name.startswith("timm:") and name not in _REGISTRY:
        return _timm_spec(name[5:], f"timm {name[5:]}")
    if name not in _REGISTRY:
        raise BadInputError(f"unknown model '{name}'{closest(name, _REGISTRY)}; known: {', '.join(list_models())} "
                            "(or any timm model as timm:NAME)")
    return _REGISTRY[name]


def create_model(name: str, image_size: int = 128, pretrained: bool | str = False, **kwargs) -> nn.Module:
    spec = get_spec(name)
    if pretrained not in (False, None, "") and not spec.pretrainable:
        raise BadInputError(f"--pretrained: '{name}' has no pretrained weights; use a timm backbone "
                            f"({', '.join(BACKBONES)}) or pretrained: false")
    if spec.pretrainable:
        kwargs["pretrained"] = pretrained
    return spec.build(image_size=image_size, **{**spec.defaults, **kwargs})
