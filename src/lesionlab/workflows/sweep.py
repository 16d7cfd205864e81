"""A grid of experiments from one YAML file; complete runs are skipped, so an interrupted sweep
resumes where it stopped.

    out: runs/seed                 # RUNS_DIR (relative to the working directory)
    data: data/ham128              # optional; else --data
    base: {epochs: 10}             # optional keys applied to every experiment
    experiments:                   # config files (relative to this file) or inline mappings
      - simple_cnn_1to1.yaml
      - {name: upgraded 1:2, model: upgraded_cnn, ratio: "1:2"}
    grid:                          # optional axes: every experiment x every combination
      seed: [0, 1, 2]

Run folders are RUNS_DIR/<experiment>/<axis>-<value>_...; runs that differ only by seed share
the experiment name, so the report shows them as mean ± sd.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import ExperimentConfig, build_config, load_yaml, to_dict
from ..errors import BadInputError, ExistsError, LesionLabError, check_at_least
from ..fileio import held_lock, hidden_name, pid_alive
from ..runs import Run, is_complete_run
from ..runs.records import SweepResult

log = logging.getLogger(__name__)
SWEEP_KEYS = ("out", "data", "base", "experiments", "grid")


@dataclass
class SweepRun:
    folder: Path
    config: ExperimentConfig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(text).replace(":", "to")).strip("_")


def read_sweep(sweep_file: str | Path, data: str | None = None, out: str | None = None,
               overrides: dict | None = None) -> list[SweepRun]:
    sweep_file = Path(sweep_file)
    spec = load_yaml(sweep_file)
    unknown = [k for k in spec if k not in SWEEP_KEYS]
    if unknown:
        from ..errors import closest

        raise BadInputError(f"{sweep_file}: unknown key '{unknown[0]}'{closest(unknown[0], SWEEP_KEYS)}; "
                            f"known: {', '.join(SWEEP_KEYS)}")
    runs_dir = Path(out or spec.get("out") or "")
    if not str(runs_dir) or str(runs_dir) == ".":
        raise BadInputError(f"{sweep_file}: no output folder: set 'out' in the file or pass --out RUNS_DIR")
    experiments = spec.get("experiments") or [{}]
    if not isinstance(experiments, list):
        raise BadInputError(f"{sweep_file}: 'experiments' must be a list of config files or mappings")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise BadInputError(f"{sweep_file}: 'grid' must map config keys to non-empty lists of values")
    base = dict(spec.get("base") or {})
    if spec.get("data"):
        base["data"] = str(spec["data"])
    if data:
        base["data"] = data
    planned = []
    for i, exp in enumerate(experiments):
        if isinstance(exp, str):
            values, origin = load_yaml(sweep_file.parent / exp), str(sweep_file.parent / exp)
            default_name = Path(exp).stem
        elif isinstance(exp, dict):
            values, origin, default_name = dict(exp), f"{sweep_file}: experiments[{i}]", f"experiment{i}"
        else:
            raise BadInputError(f"{sweep_file}: experiments[{i}] must be a file name or a mapping")
        for combo in itertools.product(*grid.values()):
            axes = dict(zip(grid, combo))
            merged = {**base, **values, **axes, **(overrides or {})}
            name = merged.get("name") or default_name
            non_seed = {k: v for k, v in axes.items() if k != "seed"}
            if non_seed:  # other axes make other experiments; seeds stay one experiment
                name += " " + " ".join(f"{k}={v}" for k, v in non_seed.items())
            merged["name"] = name
            cfg = build_config(merged, origin)
            leaf = "_".join(f"{k}-{_slug(v)}" for k, v in axes.items()) or "run"
            planned.append(SweepRun(runs_dir / _slug(name) / leaf, cfg))
    folders = [p.folder for p in planned]
    dup = {f for f in folders if folders.count(f) > 1}
    if dup:
        raise BadInputError(f"{sweep_file}: several runs would share the folder {sorted(dup)[0]}; "
                            "give the experiments distinct names")
    return planned


def same_config(folder: Path, cfg: ExperimentConfig) -> bool:
    # a key added to the config after the run was made (e.g. calibrate) counts as its default
    saved = {**to_dict(ExperimentConfig()), **Run.load(folder).config}
    wanted = to_dict(cfg)
    # the data path may be spelt differently (relative/absolute) for the same data set
    return {k: v for k, v in saved.items() if k != "data"} == {k: v for k, v in wanted.items() if k != "data"}


def _claim_path(folder: Path) -> Path:
    # not .NAME.lock: that is the run folder's own lock, held while a run is written (fileio.staged_dir).
    # A claim is not a lock (fileio.held_lock) but an entry of a work queue shared across machines: it
    # must outlive the worker's process (a failed run stays claimed until a new sweep), name its holder
    # (host and pid, so a dead one of this host is taken over), and be atomic on network filesystems,
    # where O_EXCL creation is and flock is not across machines.
    return folder.parent / hidden_name(folder.name, "claim")


def _claim(folder: Path) -> bool:
    """Take a run for this worker: a claim file beside its folder, created exclusively (atomic on
    local and network filesystems). A claim left by a dead process of this host is taken over."""
    claim = _claim_path(folder)
    claim.parent.mkdir(parents=True, exist_ok=True)
    if _create_claim(claim):
        return True
    try:
        holder = claim.read_text()
        host, pid, _ = holder.split()
    except FileNotFoundError:  # released just now: try once more
        return _create_claim(claim)
    except (OSError, ValueError):
        return False
    if host != socket.gethostname() or pid_alive(int(pid)):
        return False
    return _take_over(claim, holder)


def _create_claim(claim: Path) -> bool:
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{socket.gethostname()} {os.getpid()} {time.time():.0f}\n")
    return True


def _take_over(claim: Path, dead_holder: str) -> bool:
    """Replace a dead worker's claim by ours. Reading it, unlinking it and creating ours is not
    atomic: two workers that both read the dead claim would both unlink (the second one the first
    one's new claim) and both run. So the take-over holds a lock, and goes ahead only if the claim
    still is the dead worker's; a worker that finds the lock held leaves the run to its holder."""
    with held_lock(claim.parent / f"{claim.name}.takeover", wait=0) as held:
        if not held:
            return False
        try:
            current = claim.read_text()
        except FileNotFoundError:
            current = None  # released meanwhile by whoever took it over: up for grabs like any run
        if current is not None:
            if current != dead_holder:
                return False  # someone took it over between our read and our lock
            claim.unlink()
        return _create_claim(claim)


def run_sweep(planned: list[SweepRun], run: Callable[[ExperimentConfig, Path], object],
              echo: Callable[[str], None] = print, task_index: int = 0, task_count: int = 1,
              claim: bool = False) -> SweepResult:
    """Run every planned run that is not complete; a failure is reported and the sweep goes on.

    task_index/task_count: this worker takes runs k with k % task_count == task_index (a job array).
    claim: take each run through a lock file first, so that any number of workers, on any
    machines sharing the runs folder, can work through one sweep without running anything twice.
    """
    check_at_least(task_count, 1, "--task-count")
    if not 0 <= task_index < task_count:
        raise BadInputError(f"--task-index must lie in 0..{task_count - 1}, got {task_index}")
    done, skipped, failed, others = [], [], [], []
    for k, p in enumerate(planned, 1):
        if (k - 1) % task_count != task_index:
            continue
        if is_complete_run(p.folder):
            if not same_config(p.folder, p.config):
                raise ExistsError(f"{p.folder}: holds a finished run with another config; "
                                  "move it away or give the sweep another 'out'")
            skipped.append(p.folder)
            echo(f"[{k}/{len(planned)}] {p.folder}: complete, skipped")
            continue
        if claim and not _claim(p.folder):
            others.append(p.folder)
            echo(f"[{k}/{len(planned)}] {p.folder}: taken by another worker")
            continue
        echo(f"[{k}/{len(planned)}] {p.folder}: {p.config.name}, seed {p.config.seed}")
        try:
            if is_complete_run(p.folder):  # finished by another worker between the check and the claim
                skipped.append(p.folder)
                continue
            run(p.config, p.folder)
            done.append(p.folder)
        except LesionLabError as e:
            failed.append((p.folder, str(e)))
            echo(f"  failed: {e}")
        finally:
            if claim:
                _claim_path(p.folder).unlink(missing_ok=True)
    return {"done": done, "skipped": skipped, "failed": failed, "elsewhere": others}


def spawn_local_workers(args_of: Callable[[int], list[str]], workers: int) -> int:
    """`workers` processes `python -m lesionlab ARGS` on this machine (worker i gets args_of(i)),
    the cores split between them, each ending with this process; waits for all and returns the
    worst exit code."""
    import subprocess
    import sys

    from ..data.parallel import PARENT_ENV, cpu_count

    threads = max(1, cpu_count() // workers)
    # PARENT_ENV: each worker ends with this process (__main__ arms it first thing), so killing the
    # command never leaves its workers training on
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "LESIONLAB_NUM_THREADS": str(threads),
           PARENT_ENV: str(os.getpid())}
    procs = [subprocess.Popen([sys.executable, "-m", "lesionlab", *args_of(i)], env=env) for i in range(workers)]
    return max(p.wait() for p in procs)


def run_local_workers(sweep_file: Path, workers: int, extra_args: list[str]) -> int:
    """`workers` claiming sweep processes on this machine."""
    return spawn_local_workers(lambda i: ["sweep", str(sweep_file), "--claim", *extra_args], workers)
