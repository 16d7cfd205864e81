"""The `projected` generator family: a Projected GAN (Sauer et al., NeurIPS 2021, "Projected GANs
Converge Faster") with a FastGAN-style generator (Liu et al., ICLR 2021), the Projected GAN's own
default pairing.

Why this family for a 2-core CPU and an hour: the discriminator does not learn to see from a few
thousand crops; it judges the features of a FROZEN ImageNet EfficientNet-Lite0 (timm's
tf_efficientnet_lite0, the paper's default feature network) at four scales, seen through fixed random
projections that mix channels (CCM, 1x1 convolutions) and scales (CSM, top-down fusion as in the
paper), and only small discriminator heads train, one per scale. Those heads learn in a few thousand
steps what a discriminator from scratch needs hundreds of thousands for; DiffAugment (colour,
translation, cutout) on every image the discriminator sees keeps them from memorising the crops.
The generator is FastGAN's: few convolutions, GLU up-blocks with noise injection and a skip-layer
excitation, built for 100-shot data sets. Class conditioning: conditional batch norm in the
generator (gain and bias from a class embedding), projection conditioning in the heads, so the rare
class borrows skin, hair and lighting from the common one.

Written for lesionlab from the papers and their reference code (autonomousvision/projected-gan,
odegeasslbc/FastGAN-pytorch, mit-han-lab/data-efficient-gans), smaller for a CPU: narrower
channels, heads that stop at 4x4, and the feature network fed at `d_res` pixels instead of 224. A
training step at batch 32 and 64 px, by torch's FLOP counter: 98 GFLOP at d_res 96 (the default), 68
at 64, 341 at the paper's 224 (heads twice as wide made the 64-px step 113).
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from ..engine.runtime import Runtime
from .nets import diff_augment

Z_DIM = 64  # the Projected GAN's FastGAN configuration
FEATURE_NETWORK = "tf_efficientnet_lite0"  # timm's name; models.weights holds its offline ImageNet weights
# the feature network's stages: (first block, end block) of timm's EfficientNet, as the paper taps it
# (stem + blocks 0-1: stride 4; block 2: stride 8; blocks 3-4: stride 16; blocks 5-6: stride 32)
STAGES = ((0, 2), (2, 3), (3, 5), (5, 7))
PROJ_CHANNELS = 64  # CCM output channels of the first scale (x2, x4, x8 for the deeper ones, "expand")


def _sn_conv(*args, **kwargs) -> nn.Module:
    return spectral_norm(nn.Conv2d(*args, **kwargs))


class GLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * torch.sigmoid(b)


class NoiseInjection(nn.Module):
    """Per-pixel noise scaled by a learned weight (starts at 0); seeded through the caller's RNG."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return x + self.weight * torch.randn(n, 1, h, w, device=x.device, dtype=x.dtype)


class ClassBatchNorm(nn.Module):
    """Batch norm whose gain and bias come from the class embedding (conditional BN, as BigGAN and
    the Projected GAN's conditional FastGAN)."""

    def __init__(self, channels: int, embed_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = spectral_norm(nn.Linear(embed_dim, channels))
        self.bias = spectral_norm(nn.Linear(embed_dim, channels))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * (1 + self.gain(e))[:, :, None, None] + self.bias(e)[:, :, None, None]


class UpBlock(nn.Module):
    """Nearest x2, conv 3x3, (noise), conditional BN, GLU; `double` repeats conv/noise/BN/GLU once
    (FastGAN's UpBlockComp)."""

    def __init__(self, cin: int, cout: int, embed_dim: int, double: bool):
        super().__init__()
        self.conv1 = _sn_conv(cin, cout * 2, 3, 1, 1, bias=False)
        self.bn1 = ClassBatchNorm(cout * 2, embed_dim)
        self.two_convs = double  # not `double`: that is nn.Module's cast to float64
        if double:
            self.noise1, self.noise2 = NoiseInjection(), NoiseInjection()
            self.conv2 = _sn_conv(cout, cout * 2, 3, 1, 1, bias=False)
            self.bn2 = ClassBatchNorm(cout * 2, embed_dim)
        self.glu = GLU()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.interpolate(x, scale_factor=2, mode="nearest"))
        if self.two_convs:
            x = self.noise1(x)
        x = self.glu(self.bn1(x, e))
        if self.two_convs:
            x = self.glu(self.bn2(self.noise2(self.conv2(x)), e))
        return x


class SkipExcitation(nn.Module):
    """FastGAN's skip-layer excitation: a small map gates the channels of a 16x larger one."""

    def __init__(self, c_small: int, c_big: int):
        super().__init__()
        self.main = nn.Sequential(nn.AdaptiveAvgPool2d(4), _sn_conv(c_small, c_big, 4, 1, 0, bias=False), nn.SiLU(),
                                  _sn_conv(c_big, c_big, 1, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
        return big * self.main(small)


def _g_channels(res: int) -> int:
    return {4: 256, 8: 128, 16: 64, 32: 32, 64: 16, 128: 8}[res]


class FastGenerator(nn.Module):
    """z (n, Z_DIM) and class index (n,) -> image (n, 3, size, size) in [-1, 1]."""

    def __init__(self, size: int, n_classes: int, z_dim: int = Z_DIM):
        super().__init__()
        self.size, self.z_dim, self.n_classes = size, z_dim, n_classes
        self.embed = nn.Embedding(n_classes, z_dim)
        self.init = nn.Sequential(spectral_norm(nn.ConvTranspose2d(z_dim, _g_channels(4) * 2, 4, 1, 0, bias=False)),
                                  nn.BatchNorm2d(_g_channels(4) * 2), GLU())
        self.ups = nn.ModuleDict()
        res = 4
        while res < size:  # the doubled (noisy) blocks alternate with plain ones, as in FastGAN
            self.ups[str(res * 2)] = UpBlock(_g_channels(res), _g_channels(res * 2), z_dim, double=(res * 2) in (8, 32, 128))
            res *= 2
        # skip-layer excitation from 1/16 of the output side (4 -> 64, 8 -> 128); none at 32 px
        self.se_from = size // 16 if size >= 64 else None
        if self.se_from:
            self.se = SkipExcitation(_g_channels(self.se_from), _g_channels(size))
        self.to_rgb = _sn_conv(_g_channels(size), 3, 3, 1, 1)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        e = self.embed(c)
        z = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()  # on the hypersphere, as ProGAN and FastGAN
        x = self.init(z.view(len(z), -1, 1, 1))
        feats = {4: x}
        for res, block in self.ups.items():
            x = block(x, e)
            feats[int(res)] = x
        if self.se_from:
            x = self.se(feats[self.se_from], x)
        return torch.tanh(self.to_rgb(x))


# ---------------------------------------------------------------- the projected discriminator


class _Fusion(nn.Module):
    """CSM step: add the deeper (already fused) map, upsample x2, mix channels with a 1x1 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.out = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None = None) -> torch.Tensor:
        if deeper is not None:
            x = x + deeper
        return self.out(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class FeatureProjector(nn.Module):
    """The frozen part: the ImageNet network's four stages, then fixed random cross-channel (CCM)
    and cross-scale (CSM) mixing. Nothing here ever trains: requires_grad is off and the module
    stays in eval mode (its BatchNorm statistics are the ImageNet ones), whatever train() is asked."""

    def __init__(self, backbone: Any, d_res: int, seed: int = 0):  # timm's EfficientNet (conv_stem, bn1, blocks)
        super().__init__()
        self.d_res = d_res
        stem = nn.Sequential(backbone.conv_stem, backbone.bn1)
        self.stages = nn.ModuleList([nn.Sequential(stem, *backbone.blocks[a:b]) if i == 0 else
                                     nn.Sequential(*backbone.blocks[a:b]) for i, (a, b) in enumerate(STAGES)])
        with torch.no_grad():
            chans = [x.shape[1] for x in self._stages(torch.zeros(1, 3, 64, 64))]
        outs = [PROJ_CHANNELS * 2 ** i for i in range(4)]
        with torch.random.fork_rng(devices=[]):  # the projections are part of the design: the same for every run
            torch.manual_seed(seed)
            self.ccm = nn.ModuleList([nn.Conv2d(c, o, 1) for c, o in zip(chans, outs)])
            # top-down: the deepest map first; each fusion halves the channels (the paper's "expand")
            self.csm = nn.ModuleList([_Fusion(outs[0], outs[0])] + [_Fusion(outs[i], outs[i] // 2) for i in range(1, 4)])
        self.channels = [outs[0]] + [outs[i] // 2 for i in range(1, 4)]
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FeatureProjector":
        return super().train(False)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # x in [-1, 1] is already lite0's normalisation (mean = std = 0.5)
        if x.shape[-1] != self.d_res:
            x = F.interpolate(x, size=(self.d_res, self.d_res), mode="bilinear", align_corners=False)
        mixed = [ccm(f) for ccm, f in zip(self.ccm, self._stages(x))]
        fused = [self.csm[3](mixed[3])]
        for i in (2, 1, 0):  # coarse to fine: each scale mixed with the one below it (fused[0] so far)
            fused.insert(0, self.csm[i](mixed[i], fused[0]))
        return fused


def _d_channels(res: int) -> int:
    """Head widths by map side: a quarter of the paper's at 4 to 16 px, half at 32 (the heads were most of a CPU step's work)."""
    return {4: 128, 8: 128, 16: 64, 32: 64, 64: 64}[min(64, max(4, 2 ** round(math.log2(res))))]


class ScaleHead(nn.Module):
    """A small discriminator on one scale's projected features: strided conv blocks down to 4x4,
    then one logit per 4x4 window with projection conditioning on the class (Miyato & Koyama 2018,
    as the Projected GAN's conditional heads)."""

    CMAP = 64

    def __init__(self, cin: int, res: int, n_classes: int):
        super().__init__()
        layers, c = [], cin
        while res > 4:
            out = _d_channels(res // 2)
            layers += [_sn_conv(c, out, 4, 2, 1), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            c, res = out, res // 2
        self.body = nn.Sequential(*layers)
        k = min(res, 4)
        self.out = _sn_conv(c, self.CMAP, k, 1, 0, bias=False)
        self.embed = nn.Embedding(n_classes, self.CMAP)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.out(self.body(x))
        e = self.embed(c)[:, :, None, None]
        return ((h * e).sum(1) / math.sqrt(self.CMAP)).flatten(1)


class ProjectedDiscriminator(nn.Module):
    def __init__(self, backbone: nn.Module, d_res: int, n_classes: int, augment: bool = True):
        super().__init__()
        self.features = FeatureProjector(backbone, d_res)
        self.augment = augment
        with torch.no_grad():
            shapes = [f.shape[-1] for f in self.features(torch.zeros(1, 3, d_res, d_res))]
        self.heads = nn.ModuleList([ScaleHead(c, s, n_classes) for c, s in zip(self.features.channels, shapes)])

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Logits of every head and window, (n, L). DiffAugment here, so that every image the
        discriminator judges, real or generated, is augmented the same way."""
        if self.augment:
            x = augment(x)
        return torch.cat([head(f, c) for head, f in zip(self.heads, self.features(x))], dim=1)

    def trainable_state(self) -> dict:
        """The heads only: the feature network is rebuilt from its weights file and the fixed seed."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("features.")}


def augment(x: torch.Tensor) -> torch.Tensor:
    """DiffAugment's colour, translation and cutout policies (module-level so a test can watch it)."""
    return diff_augment(x)


def imagenet_lite0(pretrained: bool = True) -> tuple[nn.Module, dict]:
    """timm's tf_efficientnet_lite0 with genuine ImageNet weights from the installed weights package
    (offline; hash pinned, keys renamed by models.weights); with pretrained=False a randomly
    initialised one (tests of the machinery only). Returns the network and where its weights came from."""
    import timm

    net = timm.create_model(FEATURE_NETWORK, pretrained=False)
    if not pretrained:
        return net, {"weights": "random init (tests only)"}
    from ..errors import BadInputError
    from ..models.weights import LITE0, no_weights_message, package_file, package_state

    path = package_file(LITE0)
    if path is None:
        raise BadInputError("--kind projected: " + no_weights_message(LITE0.model, "its discriminator judges the "
                                                                      "features of this frozen ImageNet network"))
    net.load_state_dict(package_state(LITE0, path), strict=True)
    return net, {"weights": f"{LITE0.distribution} (ImageNet), sha256 {LITE0.sha256[:12]}"}


class ProjectedTrainer:
    """Generator, discriminator heads, their optimisers and an EMA of the generator; one training
    step is the Projected GAN's: hinge loss, D on real and generated images, then G.

    Settings as the paper's FastGAN configuration: Adam lr 2e-4, betas (0, 0.99); EMA of the
    generator with a half-life of 10k images, ramped up over the first 5% (StyleGAN2-ADA's rule)."""

    kind = "projected"

    def __init__(self, size: int, n_classes: int, lr: float, d_res: int, pretrained: bool = True, bf16: bool = False,
                 device: str | torch.device = "cpu"):
        import copy

        self.size, self.n_classes, self.d_res = size, n_classes, d_res
        # bf16 autocast of the training step's forward passes (losses, optimisers and the EMA stay fp32);
        # sampling is always fp32, so a generator samples the same on every machine
        self.runtime = Runtime(torch.device(device), bf16, channels_last=False)
        self.device = self.runtime.device
        self.g = FastGenerator(size, n_classes).to(self.device)
        self.ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        self.d: ProjectedDiscriminator | None = None  # built on the first training step: sampling never needs the feature network
        self.lr, self.pretrained = lr, pretrained
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
        self.opt_d: torch.optim.Adam | None = None
        self.images_seen = 0
        self.weights_origin: dict = {}

    def _discriminator(self) -> tuple[ProjectedDiscriminator, torch.optim.Adam]:
        """The discriminator and its optimiser, built on first use."""
        if self.d is None or self.opt_d is None:
            backbone, self.weights_origin = imagenet_lite0(self.pretrained)
            self.d = ProjectedDiscriminator(backbone, self.d_res, self.n_classes).to(self.device)
            self.opt_d = torch.optim.Adam([p for p in self.d.parameters() if p.requires_grad], lr=self.lr,
                                          betas=(0.0, 0.99), eps=1e-8)
        return self.d, self.opt_d

    def step(self, real: torch.Tensor, c: torch.Tensor) -> dict[str, float]:
        d, opt_d = self._discriminator()
        n = real.shape[0]
        real, c = real.to(self.device, non_blocking=True), c.to(self.device, non_blocking=True)
        self.g.train()
        d.train()
        z = torch.randn(n, self.g.z_dim, device=self.device)
        with self.runtime.autocast():
            fake = self.g(z, c)
            logits_real, logits_fake = d(real, c).float(), d(fake.detach(), c).float()
        loss_d = F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        heads = [p for p in d.parameters() if p.requires_grad]
        for p in heads:  # the generator's step needs gradients through the heads, not of their weights
            p.requires_grad_(False)
        with self.runtime.autocast():
            loss_g = -d(fake, c).float().mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        for p in heads:
            p.requires_grad_(True)
        self.images_seen += n
        self._update_ema(n)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    @torch.no_grad()
    def _update_ema(self, n: int) -> None:
        half_life = min(10_000, self.images_seen * 0.05)
        beta = 0.5 ** (n / max(half_life, 1e-8))
        for p_ema, p in zip(self.ema.parameters(), self.g.parameters()):
            p_ema.copy_(p.lerp(p_ema, beta))
        for b_ema, b in zip(self.ema.buffers(), self.g.buffers()):
            b_ema.copy_(b)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] on the CPU; the noise layers draw from torch's global RNG (the device's), so callers
        seed it."""
        self.ema.eval()
        return self.ema(z.to(self.device), c.to(self.device)).cpu()

    def state_dict(self) -> dict:
        state = {"g": self.g.state_dict(), "ema": self.ema.state_dict(), "opt_g": self.opt_g.state_dict(),
                 "images_seen": int(self.images_seen)}
        if self.d is not None and self.opt_d is not None:
            state.update({"d": self.d.trainable_state(), "opt_d": self.opt_d.state_dict()})
        return state

    def load_state_dict(self, state: dict, for_training: bool = False) -> None:
        self.g.load_state_dict(state["g"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.images_seen = int(state["images_seen"])
        if for_training and "d" in state:
            d, opt_d = self._discriminator()
            missing, unexpected = d.load_state_dict(state["d"], strict=False)
            if unexpected or any(not k.startswith("features.") for k in missing):
                raise ValueError(f"discriminator state does not match: {unexpected or missing}")
            opt_d.load_state_dict(state["opt_d"])


def step_speed(size: int, n_classes: int, d_res: int, batch_size: int, bf16: bool, pretrained: bool = True,
               device: str | torch.device = "cpu") -> float:
    """Training img/s of a fresh trainer on one random batch (autotune's rule: the best of its timed
    steps after its warm-up), so that `synth train --precision auto` measures bf16 where it runs."""
    from ..engine.autotune import TIMED_STEPS, WARMUP_STEPS

    trainer = ProjectedTrainer(size, n_classes, 2e-4, d_res, pretrained, bf16, device)
    real = torch.rand(batch_size, 3, size, size) * 2 - 1
    c = torch.arange(batch_size) % n_classes
    best = float("inf")
    for i in range(WARMUP_STEPS + TIMED_STEPS):
        t0 = time.perf_counter()
        trainer.step(real, c)
        if i >= WARMUP_STEPS:
            best = min(best, time.perf_counter() - t0)
    return batch_size / best
