"""Self-supervised pretraining of a registry model's encoder with lightly: SimCLR, BYOL and DINO.

lightly supplies the losses (NTXentLoss, NegativeCosineSimilarity, DINOLoss), the projection and
prediction heads and the momentum utilities (update_momentum, cosine_schedule). The views are
made by lesionlab's own batched augmentation on uint8 NHWC batches gathered from the memory-mapped
store, with the parameters of lightly's view transforms (SimCLRTransform, BYOLTransform,
DINOTransform): lightly's transforms work on one PIL image at a time, which on a 2-core CPU costs
more than the model at 64-128 px; the batched ops cost a few per cent of a step.

Differences from lightly's defaults, for lesion photographs: the smallest crop keeps 20% of the
image (lightly: 8%) because the lesion sits in the middle and small crops are mostly skin; any
rotation and vertical flips too (a lesion has no up); hue jitter is a per-channel gain.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..choices import SSL_METHODS
from ..data.augment import Augmenter, Policy
from ..errors import BadInputError, closest
from ..models.encoder import Encoder
from .optim import make_optimizer, make_scheduler
from .runtime import IMAGENET, Preprocessing, Runtime

log = logging.getLogger(__name__)

METHODS = SSL_METHODS

# SimCLRTransform with cj_strength 0.5 (lightly's advice for small images): colour jitter with
# chance 0.8, greyscale 0.2, blur 0.5, random resized crop, flips
SIMCLR_VIEW = Policy(flips=True, rotate=180, scale=(1.0, 2.2), shift=0.08, shear=5, brightness=0.4, contrast=0.4,
                     saturation=0.4, tint=0.1, jitter_p=0.8, grayscale_p=0.2, blur_p=0.5)
# BYOLTransform / DINOTransform: the first view always blurred, the second rarely and sometimes solarised
VIEW_1 = dataclasses.replace(SIMCLR_VIEW, blur_p=1.0)
VIEW_2 = dataclasses.replace(SIMCLR_VIEW, blur_p=0.1, solarize_p=0.2)
# DINO's local views: small crops (5-20% of the image), shown at half the size
LOCAL_VIEW = dataclasses.replace(SIMCLR_VIEW, scale=(2.2, 4.5))


def check_method(method: str) -> str:
    if method not in METHODS:
        raise BadInputError(f"--method must be one of {', '.join(METHODS)}, got '{method}'{closest(method, METHODS)}")
    return method


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NHWC at any size -> uint8 NHWC at size x size (area-averaged when shrinking)."""
    if x.shape[1] == size and x.shape[2] == size:
        return x
    f = x.permute(0, 3, 1, 2).float()
    f = F.interpolate(f, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return f.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class ViewMaker:
    """Random views of a uint8 NHWC batch: the method's global views, then DINO's local ones."""

    def __init__(self, method: str, seed: int = 0, local_views: int = 0):
        policies = {"simclr": [SIMCLR_VIEW, SIMCLR_VIEW], "byol": [VIEW_1, VIEW_2],
                    "dino": [VIEW_1, VIEW_2] + [LOCAL_VIEW] * (local_views if method == "dino" else 0)}[method]
        self.seed = seed
        self.augmenters = [Augmenter(p, seed) for p in policies]
        self.n_global = 2

    def set_epoch(self, epoch: int) -> None:
        for k, a in enumerate(self.augmenters):
            a.set_epoch(self.seed, epoch * 101 + k)

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        return [a(batch) for a in self.augmenters]


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.float()


class SimCLR(nn.Module):
    """Two views, one encoder, a projection head and the NT-Xent contrastive loss."""

    def __init__(self, encoder: Encoder, temperature: float = 0.2, hidden: int = 512, out: int = 128):
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        self.encoder = encoder
        self.projection = SimCLRProjectionHead(encoder.dim, hidden, out)
        self.criterion = NTXentLoss(temperature=temperature)

    def loss(self, views: list[torch.Tensor], epoch: int, rt: Runtime) -> torch.Tensor:
        with rt.autocast():
            z = [self.projection(self.encoder(v)) for v in views[:2]]
        return self.criterion(_float(z[0]), _float(z[1]))

    def before_step(self, step: int, total_steps: int) -> None:
        pass

    def after_backward(self, epoch: int) -> None:
        pass


class BYOL(nn.Module):
    """An online encoder with projection and prediction heads learns to predict a momentum
    (EMA) copy's projection of the other view; symmetric negative cosine similarity."""

    def __init__(self, encoder: Encoder, hidden: int = 1024, out: int = 256,
                 momentum: tuple[float, float] = (0.99, 1.0)):
        super().__init__()
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.encoder = encoder
        self.projection = BYOLProjectionHead(encoder.dim, hidden, out)
        self.prediction = BYOLPredictionHead(out, hidden, out)
        self.encoder_momentum = copy.deepcopy(encoder)
        self.projection_momentum = copy.deepcopy(self.projection)
        deactivate_requires_grad(self.encoder_momentum)
        deactivate_requires_grad(self.projection_momentum)
        self.criterion = NegativeCosineSimilarity()
        self.momentum = momentum

    def loss(self, views: list[torch.Tensor], epoch: int, rt: Runtime) -> torch.Tensor:
        with rt.autocast():
            p = [self.prediction(self.projection(self.encoder(v))) for v in views[:2]]
            with torch.no_grad():
                z = [self.projection_momentum(self.encoder_momentum(v)) for v in views[:2]]
        return 0.5 * (self.criterion(_float(p[0]), _float(z[1])) + self.criterion(_float(p[1]), _float(z[0])))

    def before_step(self, step: int, total_steps: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, max(total_steps, 1), *self.momentum)
        update_momentum(self.encoder, self.encoder_momentum, m)
        update_momentum(self.projection, self.projection_momentum, m)

    def after_backward(self, epoch: int) -> None:
        pass


class DINO(nn.Module):
    """Self-distillation: a student sees every view (global and local), a momentum teacher the
    global ones; cross-entropy between their centred, sharpened outputs (lightly's DINOLoss)."""

    def __init__(self, encoder: Encoder, hidden: int = 512, bottleneck: int = 64, out: int = 2048,
                 momentum: tuple[float, float] = (0.996, 1.0), freeze_last_layer: int = 1):
        super().__init__()
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.encoder = encoder
        # batch_norm in the head: the backbones here are CNNs (lightly's advice for non-ViTs)
        self.head = DINOProjectionHead(encoder.dim, hidden, bottleneck, out, batch_norm=True,
                                       freeze_last_layer=freeze_last_layer)
        self.encoder_teacher = copy.deepcopy(encoder)
        # built anew and loaded, not deep-copied: weight-normalised layers refuse deepcopy
        self.head_teacher = DINOProjectionHead(encoder.dim, hidden, bottleneck, out, batch_norm=True)
        self.head_teacher.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.encoder_teacher)
        deactivate_requires_grad(self.head_teacher)
        self.criterion = DINOLoss(output_dim=out)
        self.momentum = momentum

    def loss(self, views: list[torch.Tensor], epoch: int, rt: Runtime) -> torch.Tensor:
        with rt.autocast():
            with torch.no_grad():
                teacher = [self.head_teacher(self.encoder_teacher(v)) for v in views[:2]]
            student = [self.head(self.encoder(v)) for v in views]
        return self.criterion([_float(t) for t in teacher], [_float(s) for s in student])

    def before_step(self, step: int, total_steps: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, max(total_steps, 1), *self.momentum)
        update_momentum(self.encoder, self.encoder_teacher, m)
        update_momentum(self.head, self.head_teacher, m)

    def after_backward(self, epoch: int) -> None:
        self.head.cancel_last_layer_gradients(current_epoch=epoch)


@dataclass(frozen=True)
class SSLOptions:
    method: str
    epochs: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    local_views: int = 2  # DINO only
    temperature: float = 0.2  # SimCLR only


def build_method(encoder: Encoder, opts: SSLOptions) -> SimCLR | BYOL | DINO:
    check_method(opts.method)
    if opts.method == "simclr":
        return SimCLR(encoder, temperature=opts.temperature)
    if opts.method == "byol":
        return BYOL(encoder)
    return DINO(encoder)


class SSLTrainer:
    """One method on one encoder: epochs of (views -> loss -> AdamW step with a cosine schedule),
    with a state dict of plain types and tensors for checkpoints and resume."""

    def __init__(self, model: nn.Module, image_size: int, opts: SSLOptions, rt: Runtime, steps_per_epoch: int,
                 pre: Preprocessing = IMAGENET):
        if steps_per_epoch < 1:
            raise BadInputError(f"--batch-size {opts.batch_size}: more than the pretraining images; "
                                "not one full batch per epoch")
        self.opts, self.rt, self.size, self.pre = opts, rt, image_size, pre  # pre: the backbone's normalisation
        model.to(rt.device)
        self.encoder = Encoder(model, image_size)
        self.method = build_method(self.encoder, opts).to(rt.device)
        if rt.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * opts.epochs
        params = [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, "adamw", opts.lr, opts.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, "cosine", self.total_steps,
                                        int(round(opts.warmup_epochs * steps_per_epoch)))
        self.views = ViewMaker(opts.method, opts.seed, opts.local_views)
        self.step = 0
        self.epochs_done = 0

    def _inputs(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for k, v in enumerate(views):
            x = self.pre.to_input(v, self.rt)
            if k >= self.views.n_global:  # local views at half the size
                x = F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
                if self.rt.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            out.append(x)
        return out

    def loss_on(self, batch: torch.Tensor, epoch: int) -> torch.Tensor:
        """The method's loss on one uint8 NHWC batch (views drawn from the current generators)."""
        return self.method.loss(self._inputs(self.views(resize_batch(batch, self.size))), epoch, self.rt)

    def train_step(self, batch: torch.Tensor, epoch: int) -> float:
        self.method.train()
        self.method.before_step(self.step, self.total_steps)
        loss = self.loss_on(batch, epoch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the {self.opts.method} loss is {loss.item()} at step {self.step}; "
                                     "try a lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.after_backward(epoch)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    def train_epoch(self, batches: Iterable[torch.Tensor], epoch: int,
                    on_step: Callable[[int, int], None] | None = None) -> dict:
        """epoch counts from 0; returns the epoch's mean loss and speed."""
        self.views.set_epoch(epoch)
        t0, losses, seen = time.perf_counter(), [], 0
        for batch in batches:
            losses.append(self.train_step(batch, epoch))
            seen += len(batch)
            if on_step:
                on_step(len(losses), self.steps_per_epoch)
        if self.rt.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        self.epochs_done = epoch + 1
        return {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": round(seconds, 2), "img_s": round(seen / max(seconds, 1e-9), 1)}

    def state_dict(self) -> dict:
        return {"method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "step": self.step, "epochs_done": self.epochs_done}

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epochs_done = int(state["step"]), int(state["epochs_done"])

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The trained (student / online) encoder: the model's weights without its head."""
        return self.encoder.encoder_state()


@torch.inference_mode()
def embed(encoder: nn.Module, images: np.ndarray, rt: Runtime, size: int, batch_size: int = 256,
          pre: Preprocessing = IMAGENET) -> np.ndarray:
    """L2-normalised features of uint8 (N, H, W, 3) images, in eval mode, at the runtime's full precision
    whatever precision training used (as trainer.predict_logits, and for the same reason: the encoder's kNN
    and probe figures in history.csv and metrics.json must not depend on whether the CPU has native bf16)."""
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
            f = encoder(pre.to_input(resize_batch(chunk, size), rt)).float()
            out.append(F.normalize(f, dim=1).cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)


def knn_scores(bank: np.ndarray, bank_y: np.ndarray, query: np.ndarray, k: int = 20, t: float = 0.1) -> np.ndarray:
    """Malignant score of each query: the similarity-weighted share of malignant images among its
    k nearest bank images by cosine similarity (weights exp(sim / t), as lightly's knn_predict)."""
    k = min(k, len(bank))
    sim = torch.from_numpy(query) @ torch.from_numpy(bank).T
    top, idx = sim.topk(k, dim=1)
    w = (top / t).exp()
    y = torch.from_numpy(bank_y.astype(np.float32))[idx]
    return ((w * y).sum(1) / w.sum(1)).numpy().astype(np.float64)


def probe_scores(bank: np.ndarray, bank_y: np.ndarray, query: np.ndarray, seed: int = 0) -> np.ndarray:
    """A linear probe: class-balanced logistic regression on the frozen features."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced", random_state=seed)
    clf.fit(bank, bank_y)
    return clf.decision_function(query).astype(np.float64)


def quality(encoder: nn.Module, bank_x: np.ndarray, bank_y: np.ndarray, query_x: np.ndarray, query_y: np.ndarray,
            rt: Runtime, size: int, k: int = 20, seed: int = 0, pre: Preprocessing = IMAGENET) -> dict:
    """kNN and linear-probe ROC AUC and pAUC80 on an inner validation part (train-pool images
    held out from pretraining): the encoder's quality figure."""
    from ..metrics import pauc_above_tpr, roc_auc

    bank, query = embed(encoder, bank_x, rt, size, pre=pre), embed(encoder, query_x, rt, size, pre=pre)
    out = {}
    for name, scores in (("knn", knn_scores(bank, bank_y, query, k)), ("probe", probe_scores(bank, bank_y, query, seed))):
        out[f"{name}_roc_auc"] = float(roc_auc(query_y, scores))
        out[f"{name}_pauc_80"] = float(pauc_above_tpr(query_y, scores))
    return out
