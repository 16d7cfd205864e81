"""Data-parallel training over several processes (CPU with gloo, GPUs with NCCL), one machine or many.

One machine: `lesionlab train ... --devices N` spawns N processes. Several machines: start the
same command on every node through torchrun, which sets RANK/WORLD_SIZE/MASTER_ADDR:

    torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m lesionlab train CONFIG.yaml --data DATA_DIR --out RUN_DIR --devices N --num-nodes M

Every process draws the same epoch order and trains on its own shard; gradients are averaged by
DistributedDataParallel and BatchNorm statistics are synchronised, so N processes with a global
batch B follow the same trajectory as one process with batch B. Predictions are gathered from all
processes before any metric is computed; only rank 0 writes the run folder.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import BadInputError

T = TypeVar("T")


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    _bn_group: object = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def gather(self, array: T) -> list[T]:
        """Every process's array (or any picklable value), in rank order, on every process."""
        if not self.distributed:
            return [array]
        out: list = [None] * self.size
        dist.all_gather_object(out, array)
        return out

    def barrier(self) -> None:
        """Wait until every process gets here (nothing to wait for alone)."""
        if self.distributed:
            dist.barrier()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel with synchronised BatchNorm (or the model itself alone)."""
        if not self.distributed:
            return model
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
        if self._bn_group is None:
            self._bn_group = dist.new_group(backend="gloo")  # BN's collectives apart from DDP's buckets
        _sync_cpu_batchnorm(model, self._bn_group)
        return nn.parallel.DistributedDataParallel(model)


class _CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over all processes (torch's SyncBatchNorm
    works on GPUs only). The all-reduces are differentiable, so gradients flow through the shared
    statistics exactly as they would through one big batch.

    The statistics are computed as BatchNorm2d computes them: in float32 at least (under bf16
    autocast the input is bf16, whose 8-bit mantissa cannot hold a sum over a batch) and in two
    passes, mean first, then the mean square deviation from it. The one-pass E[x^2] - E[x]^2 loses
    the variance to cancellation when |mean| >> sd: in bf16 it was off by 0.7 for activations of
    mean 3 and sd 0.5, in float32 by 2e-5 (tests/test_distributed.py)."""

    group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xs = x if x.dtype == torch.float64 else x.float()
        count = xs.new_tensor([x.shape[0] * x.shape[2] * x.shape[3]])
        first = all_reduce(torch.cat([xs.sum((0, 2, 3)), count]), group=self.group)
        total = first[-1]
        mean = first[:-1] / total
        centred = xs - mean.view(1, -1, 1, 1)
        var = all_reduce((centred * centred).sum((0, 2, 3)), group=self.group) / total
        running_mean, running_var, seen = self.running_mean, self.running_var, self.num_batches_tracked
        with torch.no_grad():
            # as BatchNorm2d: a layer built with track_running_stats=False keeps no running statistics
            if running_mean is not None and running_var is not None and seen is not None:
                seen.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(seen)
                running_mean.mul_(1 - m).add_(mean.detach().to(running_mean.dtype) * m)
                unbiased = var.detach() * (total / (total - 1))
                running_var.mul_(1 - m).add_(unbiased.to(running_var.dtype) * m)
        y = centred * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)  # as BatchNorm2d: the input's dtype (bf16 under autocast)


def _sync_cpu_batchnorm(model: nn.Module, group) -> None:
    # the group lives on the class: a process has one world, and modules stay deep-copyable (EMA)
    _CpuSyncBatchNorm.group = group
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = _CpuSyncBatchNorm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def from_environment() -> World | None:
    """The world torchrun (or a scheduler) describes in the environment, joined; else None."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return None
    return _join(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                 int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def _join(rank: int, size: int, local_rank: int, local_size: int) -> World:
    use_cuda = torch.cuda.is_available() and os.environ.get("LESIONLAB_DEVICE", "auto") != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=size)
    return World(rank, size, local_rank, local_size)


def check_devices(devices: int, num_nodes: int, device: str) -> None:
    if devices < 1 or num_nodes < 1:
        raise BadInputError(f"--devices and --num-nodes must be at least 1, got {devices} and {num_nodes}")
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        available, what = torch.cuda.device_count(), "GPU(s)"
    else:
        from ..data.parallel import cpu_count

        available, what = cpu_count(), "CPU core(s) (one process each)"
    if devices > available:
        raise BadInputError(f"--devices {devices}: this machine has {available} {what}")


def _worker(local_rank: int, local_size: int, port: int, device: str, fn, args) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "LESIONLAB_DEVICE": device})
    world = _join(local_rank, local_size, local_rank, local_size)
    fn(*args, world=world)  # an exception goes to the parent through torch.multiprocessing, as it should
    world.barrier()  # every process has finished its part (rank 0 has written the run folder)
    # Then leave without the interpreter's teardown: there, gloo's threads and the process group's
    # destructors were seen to abort a finished worker (SIGABRT, "terminate called without an active
    # exception") in 3 of 14 runs of the 2-process test on a 2-core CPU, and still in 1 of about 45 with
    # a barrier before destroy_process_group, failing runs whose results were complete. Nothing is left to do.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn, args: tuple, devices: int, device: str = "auto") -> None:
    """Run fn(*args, world=...) in `devices` processes on this machine and wait for all of them."""
    import torch.multiprocessing as mp

    try:
        mp.start_processes(_worker, args=(devices, _free_port(), device, fn, args), nprocs=devices,
                           start_method="spawn", join=True)
    except mp.ProcessRaisedException as e:
        last = str(e).strip().splitlines()[-1]
        if last.startswith("lesionlab.errors."):  # a user-facing error in a process: say it plainly
            from ..errors import LesionLabError

            raise LesionLabError(last.split(": ", 1)[1]) from None
        raise
