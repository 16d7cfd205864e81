"""The first generator families, kept for comparison (the default, `projected`, is in projected.py);
each a few hundred real images' worth of capacity.

gan:  a DCGAN-style generator and a spectral-norm discriminator trained with hinge loss and
      DiffAugment (Zhao et al. 2020: the same differentiable augmentation on real and fake images,
      so the discriminator cannot simply memorise a few hundred images).
ddpm: diffusers' UNet2DModel with a DDPM noise schedule, sampled with DDIM.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

Z_DIM = 128


class Generator(nn.Module):
    def __init__(self, size: int = 64, z_dim: int = Z_DIM, width: int = 256):
        super().__init__()
        n_up = int(math.log2(size)) - 2  # 4x4 -> size
        chans = [max(width // 2 ** i, 32) for i in range(n_up + 1)]
        self.z_dim = z_dim
        self.stem = nn.Sequential(nn.Linear(z_dim, chans[0] * 16), nn.BatchNorm1d(chans[0] * 16), nn.ReLU(True))
        blocks = []
        for i in range(n_up):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(chans[i], chans[i + 1], 3, 1, 1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(True)]
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Conv2d(chans[-1], 3, 3, 1, 1)
        self.c0 = chans[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(z).view(-1, self.c0, 4, 4)
        return torch.tanh(self.to_rgb(self.blocks(x)))


class Discriminator(nn.Module):
    def __init__(self, size: int = 64, width: int = 32):
        super().__init__()
        n_down = int(math.log2(size)) - 2
        layers, c = [], 3
        for i in range(n_down):
            out = min(width * 2 ** i, 256)
            layers += [spectral_norm(nn.Conv2d(c, out, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            c = out
        self.body = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Conv2d(c, 1, 4, 1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).view(-1)


def diff_augment(x: torch.Tensor) -> torch.Tensor:
    """DiffAugment's colour, translation and cutout policies on a batch in [-1, 1]."""
    n, _, h, w = x.shape
    dev = x.device
    x = x + (torch.rand(n, 1, 1, 1, device=dev) - 0.5)  # brightness
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, device=dev) * 2) + mean  # saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, device=dev) + 0.5) + mean  # contrast
    # translation by up to 1/8 of the side, zero padded
    shift = int(h * 0.125 + 0.5)
    tx = torch.randint(-shift, shift + 1, (n, 1, 1), device=dev)
    ty = torch.randint(-shift, shift + 1, (n, 1, 1), device=dev)
    gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    gy = torch.clamp(gy.unsqueeze(0) + ty + 1, 0, h + 1)
    gx = torch.clamp(gx.unsqueeze(0) + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    x = padded.permute(0, 2, 3, 1)[torch.arange(n, device=dev).view(n, 1, 1), gy, gx].permute(0, 3, 1, 2)
    # cutout of half the side
    ch, cw = h // 2, w // 2
    oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=dev)
    ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=dev)
    gy, gx = torch.meshgrid(torch.arange(ch, device=dev), torch.arange(cw, device=dev), indexing="ij")
    gy = torch.clamp(gy.unsqueeze(0) + oy - ch // 2, 0, h - 1)
    gx = torch.clamp(gx.unsqueeze(0) + ox - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, device=dev)
    mask[torch.arange(n, device=dev).view(n, 1, 1), gy, gx] = 0
    return x * mask.unsqueeze(1)


def make_unet(size: int):
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(32, 64, 128, 128),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def make_schedulers():
    from diffusers import DDIMScheduler, DDPMScheduler

    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    sample = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    return train, sample
