"""Starting the lesionlab under test in a child process and watching it (tests of concurrent writers)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import lesionlab


def lesionlab_env() -> dict:
    # the lesionlab under test, whatever an installed copy or the working directory would give
    src = str(Path(lesionlab.__file__).parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def start_lesionlab(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lesionlab", *map(str, args)], env=lesionlab_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60):
    """Poll until condition() is truthy (and return it) while `proc` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}"
        time.sleep(0.05)
    raise AssertionError("timed out")


def child_pids(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (now init) has yet to reap it
