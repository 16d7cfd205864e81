"""Run a command and measure its wall time and peak memory (largest process and whole tree)."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Measured:
    returncode: int
    seconds: float
    peak_process_mib: float  # the largest single process
    peak_tree_mib: float     # all processes together (pages shared after fork counted in each)
    output: str


def measure(cmd: list[str], interrupt_after: float | None = None, env: dict | None = None) -> Measured:
    """Run cmd; sample the memory of its process tree every 0.2 s; optionally send SIGINT."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    peaks = [0.0, 0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            sizes = [_rss_mib(p) for p in _tree(proc.pid)]
            if sizes:
                peaks[0] = max(peaks[0], max(sizes))
                peaks[1] = max(peaks[1], sum(sizes))
            if interrupt_after is not None and time.time() - t0 > interrupt_after and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            stop.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    output, _ = proc.communicate()
    stop.set()
    t.join()
    return Measured(proc.returncode, time.time() - t0, peaks[0], peaks[1], output)
