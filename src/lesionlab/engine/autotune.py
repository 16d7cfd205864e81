"""`--precision auto` and `--channels-last auto` for training: chosen per model and input size from
a short measurement of training steps on this machine, not by a rule.

Which is fastest differs by backbone and machine: on a 2-core CPU with native bf16 at 128 px,
EfficientNet-Lite0 trained at 54 img/s in fp32, 86 with channels_last, 79 in bf16 without it and
85 with both, while ResNet-18 went from 78 (fp32) to 155 (bf16 + channels_last). So each candidate
(fp32 or bf16, where the device computes bf16 natively; contiguous or channels_last) runs a few
forward + backward + optimizer steps of the run's model on a batch of the run's size, and the
fastest is kept. The answer is cached in the user's cache folder ($LESIONLAB_CACHE_DIR, else
$XDG_CACHE_HOME/lesionlab, else ~/.cache/lesionlab), keyed by machine, CPU flags, torch version,
device, threads, model, input side and batch size, so it is measured once; delete the file to
measure again.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..fileio import held_lock, read_json, write_json
from .runtime import Runtime, cpu_has_native_bf16, cpu_name

log = logging.getLogger(__name__)

CACHE_FILE = "runtime-choices.json"
WARMUP_STEPS, TIMED_STEPS = 2, 3


def cache_dir() -> Path:
    if os.environ.get("LESIONLAB_CACHE_DIR"):
        return Path(os.environ["LESIONLAB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lesionlab"


def _cpu_flags() -> str:
    """A digest of the CPU's feature flags (AVX-512, AMX, bf16 ... decide what is fast)."""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return hashlib.sha256(" ".join(sorted(line.split(":", 1)[1].split())).encode()).hexdigest()[:16]
    return platform.processor() or "unknown"


def cache_key(device: torch.device, model: str, side: int, batch_size: int) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()} flags {_cpu_flags()}"
    return "|".join([platform.node(), where, f"torch {torch.__version__}", str(device), f"threads {torch.get_num_threads()}",
                     model, f"{side} px", f"batch {batch_size}"])


def candidates(device: torch.device, precision: str, channels_last: str) -> list[tuple[bool, bool]]:
    """(bf16, channels_last) pairs to measure; a setting given explicitly is not varied. bf16 is a
    candidate only where the device computes it natively (emulated, it measured 10x slower)."""
    if precision == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        precisions = [False, True] if native else [False]
    else:
        precisions = [precision == "bf16"]
    layouts = [False, True] if channels_last == "auto" else [channels_last == "true"]
    return [(p, c) for p in precisions for c in layouts]


def measure(build: Callable[[], nn.Module], device: torch.device, side: int, batch_size: int, bf16: bool, channels_last: bool) -> float:
    """Training img/s of a fresh model on one random batch: the best of TIMED_STEPS steps after
    WARMUP_STEPS (the best, not the mean: on a shared machine other work only ever slows a step)."""
    from .optim import make_optimizer

    torch.manual_seed(0)
    model: nn.Module = build().to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), "adam", 1e-4)
    x = torch.randn(batch_size, 3, side, side, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = (torch.arange(batch_size, device=device) % 2).float()
    loss_fn = nn.BCEWithLogitsLoss()
    rt = Runtime(device, bf16, channels_last)
    best = float("inf")
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with rt.autocast():
            out = model(x).reshape(-1)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= WARMUP_STEPS:
            best = min(best, time.perf_counter() - t0)
    return batch_size / best


def choose(model: str, build: Callable[[], nn.Module] | None, device: torch.device, side: int, batch_size: int,
           precision: str, channels_last: str, measure_one: Callable[[bool, bool], float] | None = None
           ) -> tuple[bool, bool, dict]:
    """(bf16, channels_last, what was measured): from the cache when this machine measured the same
    model, side and batch before, else measured now and cached. measure_one(bf16, channels_last)
    gives the img/s of another kind of training step (a generator's); by default a classifier's step
    of build()'s model."""
    def speed(bf16: bool, cl: bool) -> float:
        return measure_one(bf16, cl) if measure_one else measure(build, device, side, batch_size, bf16, cl)  # type: ignore[arg-type]

    options = candidates(device, precision, channels_last)
    if len(options) == 1:
        return options[0][0], options[0][1], {"measured": False, "reason": "nothing to choose"}
    key = cache_key(device, model, side, batch_size)
    path = cache_dir() / CACHE_FILE
    wanted = [f"{'bf16' if p else 'fp32'}{' + channels_last' if c else ''}" for p, c in options]

    def cached() -> dict | None:
        with contextlib.suppress(Exception):  # an unreadable cache is measured again, never an error
            entry = read_json(path).get(key) or {}
            if all(name in entry.get("img_s", {}) for name in wanted):
                return entry["img_s"]
        return None

    def measured() -> dict:
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the run's seeds stay as they are
            speeds = {name: round(speed(p, c), 1) for name, (p, c) in zip(wanted, options)}
        log.info("measured training img/s of %s at %d px in %.1f s: %s", model, side, time.perf_counter() - t0, speeds)
        return speeds

    speeds, from_cache = cached(), True
    if speeds is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # held while measuring: processes starting together (cv workers) measure once, not side by side;
            # after 10 minutes of waiting this process measures for itself
            with held_lock(str(path) + ".lock", wait=600) as held:
                speeds = cached()
                if speeds is None:
                    speeds, from_cache = measured(), False
                if held and not from_cache:  # only the lock's holder writes the cache
                    table = {}
                    with contextlib.suppress(Exception):
                        table = read_json(path)
                    table[key] = {"img_s": {**(table.get(key) or {}).get("img_s", {}), **speeds},
                                  "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
                    with contextlib.suppress(OSError):
                        write_json(path, table)
        except OSError:  # no cache folder (a read-only home): measured for this run only
            if speeds is None:
                speeds, from_cache = measured(), False
    best = max(wanted, key=lambda name: speeds[name])
    p, c = options[wanted.index(best)]
    return p, c, {"measured": True, "from_cache": from_cache, "cache": str(path), "img_s": {n: speeds[n] for n in wanted},
                  "chosen": best, "batch_size": batch_size, "side": side}
