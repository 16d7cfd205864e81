"""Feature networks that measure synthetic images (FID/KID, precision/recall, density/coverage).

Which network measures matters: features of the discriminator's own network flatter the generator,
which was trained to match exactly them (Kynkäänniemi et al., ICLR 2023, "The Role of ImageNet
Classes in Fréchet Inception Distance"). So `synth check` names the network behind every number,
and says whether the generator ever saw it. Built in:

  RUN_DIR         a trained lesionlab classifier: its penultimate layer (lesion-specific features that
                  no generator trains against)
  random          a randomly initialised VGG-11, never trained (Naeem et al., ICML 2020, "Reliable
                  Fidelity and Diversity Metrics": random embeddings for domains far from ImageNet):
                  colour and texture statistics that no training objective shaped, so nothing can
                  have been tuned towards them; fixed seed, the same on every machine
  lite0-imagenet  the ImageNet EfficientNet-Lite0 that the projected discriminator is built on:
                  shown only for reference, flagged as seen by such a generator
"""
from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BadInputError

BUILT_IN = ("random", "lite0-imagenet")


def _to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


class RandomFeatures:
    """Global-average-pooled last convolutional features (512) of a never-trained VGG-11."""

    seen_by_projected = False

    def __init__(self, seed: int = 0):
        import timm

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = cast(torch.nn.Module, timm.create_model("vgg11", pretrained=False, num_classes=0).features).eval()
        self.name = f"random: VGG-11, random init (seed {seed}), never trained; global average of the last conv block"

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch: int = 128) -> np.ndarray:
        out = [self.net(_to_float(images[s:s + batch])).mean((2, 3)).numpy() for s in range(0, len(images), batch)]
        return np.concatenate(out).astype(np.float64)


class Lite0Features:
    """ImageNet EfficientNet-Lite0, global-average-pooled head features (1280) at 224 px."""

    seen_by_projected = True

    def __init__(self):
        from .projected import imagenet_lite0

        net, origin = imagenet_lite0()
        self.net = net.eval()
        self.name = (f"lite0-imagenet: EfficientNet-Lite0 ({origin['weights']}), pooled head features at 224 px; the "
                     "projected discriminator's own feature network")

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        out = []
        for s in range(0, len(images), batch):
            x = F.interpolate(_to_float(images[s:s + batch]), size=(224, 224), mode="bicubic", align_corners=False)
            out.append(self.net.forward_head(self.net.forward_features(x), pre_logits=True).numpy())
        return np.concatenate(out).astype(np.float64)


class ClassifierFeatures:
    """Penultimate-layer features of a trained lesionlab classifier (the input of its last Linear)."""

    seen_by_projected = False

    def __init__(self, run_dir: str | Path):
        from ..engine.runtime import resolve_runtime
        from ..runs import ModelPredictor, load_predictor

        predictor = load_predictor(run_dir, device="cpu")
        if not isinstance(predictor, ModelPredictor):
            raise BadInputError(f"--features {run_dir}: needs a train run folder (one network), not an ensemble")
        self.run = predictor
        self.name = f"{run_dir} ({type(self.run.model).__name__}, penultimate layer)"
        last = [m for m in self.run.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        self._captured: torch.Tensor | None = None
        last.register_forward_hook(lambda mod, inp, out: setattr(self, "_captured", inp[0].detach()))
        self.rt = resolve_runtime("cpu", "32", "true" if self.run.runtime.channels_last else "false")

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch: int = 128) -> np.ndarray:
        from .quality import resize

        out = []
        for start in range(0, len(images), batch):
            x = torch.from_numpy(resize(images[start:start + batch], self.run.size))
            self.run.model(self.run.preprocessing.to_input(x, self.rt))
            assert self._captured is not None  # set by the forward hook
            out.append(self._captured.float().reshape(len(x), -1).numpy())
        return np.concatenate(out).astype(np.float64)


def feature_network(spec: str | Path):
    """A feature network from a --features value: a built-in name or a train run folder."""
    if str(spec) == "random":
        return RandomFeatures()
    if str(spec) == "lite0-imagenet":
        return Lite0Features()
    if not Path(spec).exists():
        raise BadInputError(f"--features {spec}: neither a train run folder nor a built-in network "
                            f"({', '.join(BUILT_IN)})")
    return ClassifierFeatures(spec)
