"""Run chunked work on every core with a bounded number of chunks in flight, results in order."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Iterable, Iterator


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _worker_init(parent: int) -> None:
    # one thread per process: the pool already uses every core. torch only if the parent had it:
    # importing it here would cost each worker a second or two
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    exit_with_parent(parent)


PR_SET_PDEATHSIG = 1
PARENT_ENV = "LESIONLAB_PARENT_PID"  # set for `python -m lesionlab` workers (sweep.spawn_local_workers)


def exit_with_parent(parent: int) -> None:
    """End this process when `parent` dies, even by kill -9: a decoding worker waits for tasks on a
    pipe whose writing end it shares, and a cv, tune or sweep worker trains on its own, so either
    would otherwise never see its parent go and live on under PID 1."""
    if sys.platform.startswith("linux") and _parent_death_signal():
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="lesionlab-parent-watch").start()


def _parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when the thread that started it exits (its parent's thread
    that submitted the first tasks: map_ordered's caller, alive while the pool is). True if armed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, every: float = 1.0) -> None:
    # elsewhere: a dead parent's children are adopted by another process, so the parent pid changes
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


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
    with ProcessPoolExecutor(workers, mp_context=_context(), initializer=_worker_init, initargs=(os.getpid(),)) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.submit(fn, *task))
            if len(pending) >= window * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
