"""Run chunked work on every core with a bounded number of chunks in flight, results in order."""
from __future__ import annotations

import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Iterable, Iterator


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _worker_init() -> None:
    # one thread per process: the pool already uses every core. torch only if the parent had it:
    # importing it here would cost each worker a second or two
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _context():
    # fork starts workers in milliseconds and works from any __main__ (stdin, notebooks);
    # elsewhere (macOS, Windows) spawn is the safe choice
    return get_context("fork" if sys.platform.startswith("linux") else "spawn")


def map_ordered(fn: Callable, tasks: Iterable[tuple], workers: int, window: int = 4) -> Iterator:
    """Yield fn(*task) for each task, in order; at most `window * workers` tasks in flight so that
    memory stays bounded however many tasks there are. workers <= 1 runs in this process."""
    if workers <= 1:
        for task in tasks:
            yield fn(*task)
        return
    with ProcessPoolExecutor(workers, mp_context=_context(), initializer=_worker_init) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.submit(fn, *task))
            if len(pending) >= window * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
