"""The training loop: store positions chosen per epoch by a sampler -> uint8 batches gathered from
the memory-mapped store (in a background thread) -> augmentation -> model; per-epoch validation;
the checkpoint kept is the best on validation, and training can stop early on it. Also measures
the loop's img/s against the model's pure compute on the same batches."""
from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Iterator, cast

import numpy as np
import torch
from torch import nn

from ..data.augment import Augmenter
from ..data.sampling import EpochSampler
from ..metrics import bce_per_sample, compute_metrics
from ..models.encoder import is_head_key
from .distributed import World
from .losses import TrainingLoss
from .mixup import Mixup
from .optim import make_ema, make_optimizer, make_scheduler
from .runtime import IMAGENET, Preprocessing, Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """What the loop needs of a run's config, built by from_config: the fields named as config keys
    take the config's values and have no default here (the config's defaults are the only ones);
    the rest are derived from the config or from the model built."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    optimizer: str
    weight_decay: float
    scheduler: str
    warmup_epochs: float
    loss: str
    focal_alpha: float
    focal_gamma: float
    label_smoothing: float
    augment: str
    mixup: float  # Beta(alpha, alpha) weight of mixup (engine/mixup.py); 0 = off
    ema: float
    eval_batch_size: int
    measure_compute: bool  # extra steps on a copy of the model after training (benchmarks)
    encoder_lr_mult: float  # the encoder's (all but the head's) learning rate as a multiple of lr
    linear_probe_epochs: int  # first epochs in which only the head's weights change
    layer_decay: float  # each layer group below the head at this factor of the one above (1 = off)
    batchnorm: str  # frozen: BatchNorm statistics and affine weights stay as loaded
    # derived from the config by from_config:
    pos_weight: float | None  # a number: `auto` resolved on the training draw by the caller
    monitor: str  # the config's resolved monitor (early_stop's metric when set)
    patience: int  # stop after this many epochs without a better `monitor` (0 = never: no early_stop)
    # known once the model is built:
    head: str = ""  # state-dict prefix of the classifier head: needed by the lr-multiplier, probe and decay options
    preprocess: Preprocessing = IMAGENET  # input size, interpolation and normalisation of the model's input

    @classmethod
    def from_config(cls, cfg: Any, pos_weight: float | None, **built: Any) -> "TrainOptions":
        """From an ExperimentConfig (typed Any: the config sits above engine/, which never imports it):
        every field named as a config key copied; pos_weight resolved by the caller (`auto` is
        benign/malignant of the training draw); `built`: head and preprocess, known once the model is."""
        copied = {f.name: getattr(cfg, f.name) for f in fields(cls) if f.name not in _NOT_COPIED}
        return cls(**copied, pos_weight=pos_weight, monitor=cfg.resolved_monitor(),
                   patience=cfg.patience if cfg.early_stop else 0, **built)


_NOT_COPIED = frozenset({"pos_weight", "monitor", "patience", "head", "preprocess"})


@dataclass
class TrainResult:
    best_state: dict
    best_epoch: int
    history: list[dict]
    train_img_s: float
    compute_img_s: float | None
    stopped_early: bool


class Batches:
    """Training batches: the sampler's positions for an epoch -> (uint8 NHWC, float labels)."""

    def __init__(self, pixels: Callable[[np.ndarray], np.ndarray], labels: np.ndarray, sampler: EpochSampler,
                 batch_size: int):
        self.pixels, self.labels, self.sampler, self.batch_size = pixels, labels, sampler, batch_size

    def positions(self, epoch: int) -> list[np.ndarray]:
        order = self.sampler.epoch(epoch)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()  # BatchNorm cannot train on a batch of one
        return batches

    def load(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.pixels(positions)), torch.from_numpy(self.labels[positions].astype(np.float32))


def prefetch(items: Iterable, depth: int = 3) -> Iterator:
    """Produce the next items in a background thread while the caller computes (gathering from a
    memory map releases the GIL for the copy), so data loading stays off the critical path."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)
        q.put(done)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, rt: Runtime,
                   batch_size: int = 256, pre: Preprocessing = IMAGENET) -> np.ndarray:
    """Logits for uint8 (N, H, W, 3) images, in eval mode, preprocessed by `pre`, at the runtime's full precision
    (float32, or float64) even where training ran under bf16 autocast: every path that scores images (the run's
    validation and test, OOF, predict, exports) must give the same numbers on any machine, since thresholds are
    chosen on these scores. bf16 moved probabilities by up to 4.6e-3 on a CPU with native bf16, against about
    1e-6 between float32 paths; scoring is a small part of a run's time."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        chunk = torch.from_numpy(np.ascontiguousarray(chunk)) if isinstance(chunk, np.ndarray) else chunk
        out.append(model(pre.to_input(chunk, rt)).reshape(-1).to(torch.float64).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)  # float64 already, chunk by chunk


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def predict_sharded(model: nn.Module, images: np.ndarray, rt: Runtime, batch_size: int, world: World,
                    pre: Preprocessing = IMAGENET) -> np.ndarray:
    """Each process predicts its share of `images`; every process gets all logits, in order."""
    if not world.distributed:
        return predict_logits(model, images, rt, batch_size, pre)
    mine = np.arange(world.rank, len(images), world.size)
    parts = world.gather(predict_logits(model, images[mine], rt, batch_size, pre))
    out = np.empty(len(images))
    for r, part in enumerate(parts):
        out[r::world.size] = part
    return out


def _step(model, loss_fn, optimizer, x, y, rt, frozen: list | None = None) -> torch.Tensor:
    with rt.autocast():
        logits = model(x).reshape(-1)
    logits = logits if logits.dtype == torch.float64 else logits.float()  # bf16 under autocast
    loss = loss_fn(logits, y.to(logits.dtype))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for p in frozen or ():
        p.grad = None  # optimizers skip parameters without a gradient (weight decay included)
    optimizer.step()
    return logits


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Parameter name -> layer group, 0 nearest the input: timm's own grouping (stem, each block, ...,
    head) where the model declares one, else each module that holds weights, in order."""
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        return group_parameters(model, cast(Any, model).group_matcher(coarse=False), reverse=True)  # timm's own method
    owners = [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]
    rank = {name: i for i, name in enumerate(owners)}
    return {name: rank[name.rpartition(".")[0]] for name, _ in model.named_parameters()}


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(model: nn.Module) -> None:
    """Running statistics fixed (eval mode; call again after model.train()) and affine weights untrained."""
    for m in batchnorm_layers(model):
        m.eval()
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)


def _param_groups(model: nn.Module, opts: TrainOptions) -> tuple[list, list]:
    """(optimizer parameter groups, encoder parameters): encoder and head apart when an option
    treats them differently (the head's group last), else one group. With layer decay each layer
    group of the encoder gets lr * encoder_lr_mult * layer_decay ** (its distance from the head)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not opts.head or (opts.encoder_lr_mult == 1 and not opts.linear_probe_epochs and opts.layer_decay == 1):
        return [p for _, p in trainable], []
    head = [p for n, p in trainable if is_head_key(n, opts.head)]
    encoder = [(n, p) for n, p in trainable if not is_head_key(n, opts.head)]
    if not head:
        raise ValueError(f"no parameters under the head prefix '{opts.head}'")
    base = opts.lr * opts.encoder_lr_mult
    if opts.layer_decay == 1:
        groups = [{"params": [p for _, p in encoder], "lr": base}]
    else:
        ids = layer_ids(model)
        top = max(ids.values())
        by_layer: dict[int, list] = {}
        for n, p in encoder:
            by_layer.setdefault(ids.get(n, top), []).append(p)
        groups = [{"params": ps, "lr": base * opts.layer_decay ** (top - i)} for i, ps in sorted(by_layer.items())]
    return groups + [{"params": head, "lr": opts.lr}], [p for _, p in encoder]


def _improved(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if monitor == "val_loss" else value > best


def fit(model: nn.Module, batches: Batches, val_x: np.ndarray, val_y: np.ndarray, rt: Runtime,
        opts: TrainOptions, on_epoch: Callable[[dict], None] | None = None, world: World | None = None) -> TrainResult:
    """Train; keep the state best on `opts.monitor` (the EMA weights when EMA is on). With several
    processes, `batches` yields this process's shard and every metric uses gathered predictions."""
    world = world or World()
    model.to(rt.device, dtype=rt.dtype)
    frozen_bn = opts.batchnorm == "frozen"
    if frozen_bn:
        freeze_batchnorm(model)  # before the optimizer and DDP see which parameters train
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    net = world.wrap(model, rt.device)
    loss_fn = TrainingLoss(opts.loss, opts.pos_weight, opts.focal_alpha, opts.focal_gamma,
                           opts.label_smoothing).to(rt.device, dtype=rt.dtype)
    groups, encoder_params = _param_groups(model, opts)
    optimizer = make_optimizer(groups, opts.optimizer, opts.lr, opts.weight_decay)
    steps = len(batches.positions(0))
    scheduler = make_scheduler(optimizer, opts.scheduler, steps * opts.epochs, int(round(opts.warmup_epochs * steps)))
    ema = make_ema(model, opts.ema)
    augment = Augmenter(opts.augment, opts.seed)
    mixup = Mixup(opts.mixup, opts.seed)
    history, best, best_state, best_epoch, stopped = [], None, None, 0, False
    loop_seconds, loop_images = 0.0, 0
    for epoch in range(1, opts.epochs + 1):
        model.train()
        if frozen_bn:
            freeze_batchnorm(model)
        augment.set_epoch(opts.seed, epoch)
        mixup.set_epoch(opts.seed, epoch)
        position_batches = batches.positions(epoch - 1)
        logits_all, y_all = [], []
        frozen = encoder_params if epoch <= opts.linear_probe_epochs else None
        t0 = time.perf_counter()
        for images, labels in prefetch(batches.load(p) for p in position_batches):
            x = opts.preprocess.to_input(augment(images), rt)
            y = labels.to(rt.device, non_blocking=True)
            x, target = mixup(x, y)
            logits_all.append(_step(net, loss_fn, optimizer, x, target, rt, frozen).detach())
            # training metrics need hard labels: a mixed image counts as the class of its larger share
            y_all.append(y if not mixup.active else (target > 0.5).to(y.dtype))
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        n_seen = sum(len(p) for p in position_batches)
        if epoch > 1 or opts.epochs == 1:  # the first epoch carries one-off warm-up costs
            loop_seconds += seconds
            loop_images += n_seen
        tr_logits = np.concatenate(world.gather(torch.cat(logits_all).cpu().numpy().astype(np.float64)))
        tr_y = np.concatenate(world.gather(torch.cat(y_all).cpu().numpy()))
        train_m = compute_metrics(tr_y, _sigmoid(tr_logits), 0.5, bce_per_sample(tr_y, tr_logits))
        judged = ema.module if ema is not None else model
        v_logits = predict_sharded(judged, val_x, rt, opts.eval_batch_size, world, opts.preprocess)
        val_m = compute_metrics(val_y, _sigmoid(v_logits), 0.5, bce_per_sample(val_y, v_logits))
        row = {"epoch": epoch, "seconds": round(seconds, 3), "train_img_s": round(world.size * n_seen / seconds, 2),
               "lr": optimizer.param_groups[-1]["lr"]}  # the head's (the base lr)
        row.update({f"train_{k}": v for k, v in train_m.items() if k != "threshold"})
        row.update({f"val_{k}": v for k, v in val_m.items() if k != "threshold"})
        history.append(row)
        if _improved(row[opts.monitor], best, opts.monitor):
            best, best_epoch = row[opts.monitor], epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in judged.state_dict().items()}
        if on_epoch:
            on_epoch(row)
        if opts.patience and epoch - best_epoch >= opts.patience:
            stopped = True
            log.info("early stop at epoch %d: %s last improved at epoch %d", epoch, opts.monitor, best_epoch)
            break
    # per process: the loop and the pure compute on this process's batches
    compute = None
    if opts.measure_compute:
        compute = measure_compute(model, lambda params: make_optimizer(params, opts.optimizer, opts.lr, opts.weight_decay),
                                  loss_fn, batches, rt, pre=opts.preprocess, frozen_batchnorm=frozen_bn)
    assert best_state is not None  # the first epoch is always the best so far (epochs >= 1)
    return TrainResult(best_state, best_epoch, history, loop_images / max(loop_seconds, 1e-9), compute, stopped)


def measure_compute(model: nn.Module, new_optimizer: Callable, loss_fn: nn.Module, batches: Batches,
                    rt: Runtime, n_batches: int = 20, warmup: int = 3, pre: Preprocessing = IMAGENET,
                    frozen_batchnorm: bool = False) -> float:
    """img/s of forward + backward + optimizer step alone, on training batches already preprocessed
    and on the device; run on copies so the trained model is untouched."""
    model = copy.deepcopy(model).train()
    if frozen_batchnorm:
        freeze_batchnorm(model)
    opt = new_optimizer([p for p in model.parameters() if p.requires_grad])
    ready = []
    for p in batches.positions(0)[: n_batches + warmup]:
        images, labels = batches.load(p)
        ready.append((pre.to_input(images, rt), labels.to(rt.device)))
    seconds, images_done = 0.0, 0
    for k, (x, y) in enumerate(ready):
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _step(model, loss_fn, opt, x, y, rt)
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        if k >= warmup or len(ready) <= warmup:
            seconds += time.perf_counter() - t0
            images_done += len(y)
    return images_done / max(seconds, 1e-9)
