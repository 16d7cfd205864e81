"""Augmentation policies on batches of uint8 images (N, H, W, 3), applied to training batches only.

Each policy is a handful of batched tensor operations with per-image random parameters, so it
costs little next to the model; randomness comes from a torch.Generator seeded per epoch.

  none    no change
  light   horizontal/vertical flips, 90-degree rotations (lesions have no up or down)
  medium  light + one affine warp per image (any rotation, scale, shift, shear; this also
          does the random resized crop) + colour jitter (brightness, contrast, saturation, tint)
  heavy   medium, stronger, + Gaussian blur and coarse dropout (erased rectangles)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..choices import POLICIES
from ..errors import BadInputError, closest


@dataclass(frozen=True)
class Policy:
    flips: bool = False
    rotate: float = 0.0        # max degrees of the affine rotation
    scale: tuple[float, float] = (1.0, 1.0)  # zoom range (>1 zooms in: a random resized crop)
    shift: float = 0.0         # max shift, fraction of the side
    shear: float = 0.0         # max degrees
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    tint: float = 0.0          # per-channel gain, a cheap stand-in for hue jitter
    blur_p: float = 0.0
    dropout_p: float = 0.0
    dropout_holes: int = 0
    dropout_size: float = 0.0  # max side of a hole, fraction of the image side
    # for self-supervised views (engine/ssl.py): per-image chances, as in SimCLR/BYOL recipes
    jitter_p: float = 1.0      # chance that an image gets the colour jitter
    grayscale_p: float = 0.0
    solarize_p: float = 0.0


_POLICIES = {
    "none": Policy(),
    "light": Policy(flips=True),
    "medium": Policy(flips=True, rotate=180, scale=(1.0, 1.3), shift=0.06, shear=5,
                     brightness=0.15, contrast=0.15, saturation=0.15, tint=0.04),
    "heavy": Policy(flips=True, rotate=180, scale=(0.9, 1.5), shift=0.1, shear=10,
                    brightness=0.25, contrast=0.25, saturation=0.3, tint=0.08,
                    blur_p=0.25, dropout_p=0.5, dropout_holes=3, dropout_size=0.25),
}


def get_policy(name: str) -> Policy:
    if name not in _POLICIES:
        raise BadInputError(f"unknown augmentation policy '{name}'{closest(name, POLICIES)}; known: {', '.join(POLICIES)}")
    return _POLICIES[name]


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g).to(device) * (hi - lo) + lo


def _flips_rot90(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Exact flips and quarter turns on uint8 NHWC (no resampling)."""
    n = x.shape[0]
    hflip = torch.rand(n, generator=g) < 0.5
    vflip = torch.rand(n, generator=g) < 0.5
    x = torch.where(hflip.view(-1, 1, 1, 1).to(x.device), x.flip(2), x)
    x = torch.where(vflip.view(-1, 1, 1, 1).to(x.device), x.flip(1), x)
    if x.shape[1] == x.shape[2]:
        turn = (torch.rand(n, generator=g) < 0.5).view(-1, 1, 1, 1).to(x.device)
        x = torch.where(turn, x.transpose(1, 2), x)  # transpose + the flips above = all 8 symmetries
    return x


def _affine(x: torch.Tensor, p: Policy, g: torch.Generator) -> torch.Tensor:
    """One warp per image on float NCHW: rotation, zoom, shift, shear; reflection at the borders."""
    n, dev = x.shape[0], x.device
    angle = _uniform(n, -p.rotate, p.rotate, g, dev) * math.pi / 180
    shear = _uniform(n, -p.shear, p.shear, g, dev) * math.pi / 180
    zoom = _uniform(n, *p.scale, g, dev)
    aspect = torch.exp(_uniform(n, -0.1, 0.1, g, dev)) if p.scale != (1.0, 1.0) else torch.ones(n, device=dev)
    tx, ty = (_uniform(n, -2 * p.shift, 2 * p.shift, g, dev) for _ in range(2))
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = 1 / (zoom * aspect.sqrt()), aspect.sqrt() / zoom
    theta = torch.stack([
        torch.stack([cos * sx, (-sin + torch.tan(shear) * cos) * sy, tx], 1),
        torch.stack([sin * sx, cos * sy, ty], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _colour(x: torch.Tensor, p: Policy, g: torch.Generator) -> torch.Tensor:
    if p.jitter_p < 1:
        chosen = (torch.rand(x.shape[0], generator=g) < p.jitter_p).to(x.device).view(-1, 1, 1, 1)
        return torch.where(chosen, _colour(x, replace(p, jitter_p=1.0), g), x)
    n, dev = x.shape[0], x.device
    view = (n, 1, 1, 1)
    if p.brightness:
        x = x * _uniform(n, 1 - p.brightness, 1 + p.brightness, g, dev).view(view)
    if p.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform(n, 1 - p.contrast, 1 + p.contrast, g, dev).view(view) + mean
    if p.saturation:
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - grey) * _uniform(n, 1 - p.saturation, 1 + p.saturation, g, dev).view(view) + grey
    if p.tint:
        gains = (torch.rand(n, 3, generator=g).to(dev) * 2 - 1) * p.tint + 1
        x = x * gains.view(n, 3, 1, 1)
    return x


def _grayscale(x: torch.Tensor, p: Policy, g: torch.Generator) -> torch.Tensor:
    chosen = (torch.rand(x.shape[0], generator=g) < p.grayscale_p).to(x.device).view(-1, 1, 1, 1)
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
    return torch.where(chosen, grey, x)


def _solarize(x: torch.Tensor, p: Policy, g: torch.Generator) -> torch.Tensor:
    chosen = (torch.rand(x.shape[0], generator=g) < p.solarize_p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(chosen & (x >= 128), 255 - x, x)


def _blur(x: torch.Tensor, p: Policy, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    chosen = (torch.rand(n, generator=g) < p.blur_p).to(x.device)
    if not chosen.any():
        return x
    sigma = float(torch.rand(1, generator=g)) * 1.2 + 0.3
    k = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    k = torch.exp(-(k ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    blurred = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="reflect"), k.view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c)
    blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="reflect"), k.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c)
    return torch.where(chosen.view(-1, 1, 1, 1), blurred, x)


def _dropout(x: torch.Tensor, p: Policy, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    keep = torch.ones(n, 1, h, w, device=x.device, dtype=x.dtype)
    yy = torch.arange(h, device=x.device).view(1, h, 1)
    xx = torch.arange(w, device=x.device).view(1, 1, w)
    for _ in range(p.dropout_holes):
        active = (torch.rand(n, generator=g) < p.dropout_p).to(x.device).view(n, 1, 1)
        hh = (torch.rand(n, generator=g) * p.dropout_size * h).to(x.device).view(n, 1, 1) + 1
        ww = (torch.rand(n, generator=g) * p.dropout_size * w).to(x.device).view(n, 1, 1) + 1
        cy = (torch.rand(n, generator=g) * h).to(x.device).view(n, 1, 1)
        cx = (torch.rand(n, generator=g) * w).to(x.device).view(n, 1, 1)
        hole = ((yy - cy).abs() < hh / 2) & ((xx - cx).abs() < ww / 2) & active
        keep = keep * (~hole).unsqueeze(1).to(x.dtype)
    fill = x.mean(dim=(2, 3), keepdim=True)  # the image's mean colour, not black: no new edges
    return x * keep + fill * (1 - keep)


class Augmenter:
    """Callable on uint8 NHWC batches; returns uint8 NHWC batches of the same shape."""

    def __init__(self, policy: str | Policy, seed: int = 0):
        self.name = policy if isinstance(policy, str) else "custom"
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.generator = torch.Generator().manual_seed(seed)

    def set_epoch(self, seed: int, epoch: int) -> None:
        self.generator.manual_seed(seed * 100_003 + epoch)

    @property
    def active(self) -> bool:
        return self.name != "none"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p, g = self.policy, self.generator
        if not self.active:
            return x
        if p.flips:
            x = _flips_rot90(x, g)
        needs_float = p.rotate or p.shift or p.shear or p.scale != (1.0, 1.0) or p.brightness or p.contrast \
            or p.saturation or p.tint or p.blur_p or p.dropout_p or p.grayscale_p or p.solarize_p
        if not needs_float:
            return x
        f = x.permute(0, 3, 1, 2).float()
        if p.rotate or p.shift or p.shear or p.scale != (1.0, 1.0):
            f = _affine(f, p, g)
        f = _colour(f, p, g)
        if p.grayscale_p:
            f = _grayscale(f, p, g)
        if p.solarize_p:
            f = _solarize(f.clamp(0, 255), p, g)
        if p.blur_p:
            f = _blur(f, p, g)
        if p.dropout_p:
            f = _dropout(f, p, g)
        return f.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def preview_grid(data_dir, policy: str, out, rows: int = 6, columns: int = 6, seed: int = 0) -> None:
    """PNG grid: each row one train-pool image (alternating malignant and benign), the first
    column unchanged, the others as `policy` augments it."""
    import io

    import numpy as np
    from PIL import Image

    from ..fileio import write_bytes
    from .splits import load_split
    from .store import Store

    store = Store.open(data_dir)
    labels = store.table["label"].to_numpy()
    pool = load_split(store).positions(store.table, "train")
    rng = np.random.default_rng(seed)
    mal, ben = pool[labels[pool] == 1], pool[labels[pool] == 0]
    picks = [rng.choice(mal if i % 2 == 0 and len(mal) else ben) for i in range(rows)]
    images = torch.from_numpy(store.pixels(np.array(picks)))
    aug = Augmenter(policy, seed)
    cols = [images] + [aug(images) for _ in range(columns - 1)]
    grid = torch.stack(cols, 1)  # rows, columns, H, W, 3
    r, c, h, w, _ = grid.shape
    pad = 2
    canvas = np.full((r * (h + pad) + pad, c * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(r):
        for j in range(c):
            canvas[pad + i * (h + pad): pad + i * (h + pad) + h, pad + j * (w + pad): pad + j * (w + pad) + w] = grid[i, j].numpy()
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    Path(out).parent.mkdir(parents=True, exist_ok=True)  # a new output: write_bytes creates no folders
    write_bytes(out, buf.getvalue())
