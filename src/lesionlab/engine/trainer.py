"""The training loop: uint8 images already in memory -> batches -> model; per-epoch validation;
the checkpoint kept is the best on validation. Also measures the loop's img/s against the
model's pure compute on the same batches."""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..metrics import bce_per_sample, compute_metrics
from .runtime import Runtime, to_input

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    best_state: dict
    best_epoch: int
    history: list[dict]
    train_img_s: float
    compute_img_s: float


def make_optimizer(params, lr: float) -> torch.optim.Optimizer:
    # fused Adam: measured 61 vs 43 img/s for simple_cnn on CPU, whose 33.6M-parameter head
    # makes the optimizer step a large share of each iteration
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr)


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, rt: Runtime,
                   batch_size: int = 256) -> np.ndarray:
    """Logits for uint8 (N, H, W, 3) images, in eval mode."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        chunk = torch.from_numpy(np.ascontiguousarray(chunk)) if isinstance(chunk, np.ndarray) else chunk
        with rt.autocast():
            out.append(model(to_input(chunk, rt)).float().squeeze(1).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()  # BatchNorm cannot train on a batch of one
    return batches


def train(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, val_x: np.ndarray,
          val_y: np.ndarray, rt: Runtime, epochs: int, batch_size: int, lr: float, seed: int,
          monitor: str = "val_loss", eval_batch_size: int = 256,
          on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train on uint8 NHWC `train_x` with 0/1 `train_y`; keep the state best on `monitor`."""
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), lr)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    y_dev = train_y.float().to(rt.device)
    history, best, best_state, best_epoch = [], None, None, 0
    sign = 1.0 if monitor == "val_loss" else -1.0
    loop_seconds, loop_images = 0.0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        batches = epoch_batches(len(train_x), batch_size, gen)
        logits_all, y_all = [], []
        t0 = time.perf_counter()
        for idx in batches:
            x = to_input(train_x[idx], rt)
            y = y_dev[idx.to(rt.device)]
            with rt.autocast():
                logits = model(x).squeeze(1).float()
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            logits_all.append(logits.detach())
            y_all.append(y)
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        n_seen = sum(len(b) for b in batches)
        if epoch > 1 or epochs == 1:  # the first epoch carries one-off warm-up costs
            loop_seconds += seconds
            loop_images += n_seen
        tr_logits = torch.cat(logits_all).cpu().numpy().astype(np.float64)
        tr_y = torch.cat(y_all).cpu().numpy()
        train_m = compute_metrics(tr_y, _sigmoid(tr_logits), 0.5, bce_per_sample(tr_y, tr_logits))
        v_logits = predict_logits(model, val_x, rt, eval_batch_size)
        val_m = compute_metrics(val_y, _sigmoid(v_logits), 0.5, bce_per_sample(val_y, v_logits))
        row = {"epoch": epoch, "seconds": round(seconds, 3), "train_img_s": round(n_seen / seconds, 2),
               "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v for k, v in train_m.items() if k != "threshold"})
        row.update({f"val_{k}": v for k, v in val_m.items() if k != "threshold"})
        history.append(row)
        score = sign * row[monitor]
        if best is None or score < best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if on_epoch:
            on_epoch(row)
    compute = measure_compute(model, optimizer, train_x, train_y, rt, batch_size, gen)
    return TrainResult(best_state, best_epoch, history, loop_images / max(loop_seconds, 1e-9), compute)


def measure_compute(model: nn.Module, optimizer: torch.optim.Optimizer, train_x: torch.Tensor,
                    train_y: torch.Tensor, rt: Runtime, batch_size: int, gen: torch.Generator,
                    n_batches: int = 20, warmup: int = 3) -> float:
    """img/s of forward + backward + optimizer step alone, on training batches already normalised
    and on the device; run on copies so the trained model is untouched."""
    model = copy.deepcopy(model).train()
    opt = type(optimizer)(model.parameters(), **{k: v for k, v in optimizer.defaults.items()})
    loss_fn = nn.BCEWithLogitsLoss()
    batches = epoch_batches(len(train_x), batch_size, gen)[: n_batches + warmup]
    ready = [(to_input(train_x[i], rt), train_y[i].float().to(rt.device)) for i in batches]
    seconds, images = 0.0, 0
    for k, (x, y) in enumerate(ready):
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with rt.autocast():
            logits = model(x).squeeze(1).float()
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        if k >= warmup or len(ready) <= warmup:
            seconds += time.perf_counter() - t0
            images += len(y)
    return images / max(seconds, 1e-9)
