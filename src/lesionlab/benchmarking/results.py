"""docs/results.md and what each section records (machine, commit): each benchmark script owns one section
and rewrites only it."""
from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
from pathlib import Path

from ..fileio import write_text


def _checkout() -> Path:
    """The checkout whose `benchmarks/` script runs (`python benchmarks/NAME.py`): docs/results.md, configs/ and
    the data sets beside it (../shared) are found from there; the current folder otherwise. Not the package's own
    place: an installed (non-editable) package lives in site-packages, away from the checkout."""
    script = Path(sys.argv[0]).resolve()
    return script.parent.parent if script.parent.name == "benchmarks" else Path.cwd()


ROOT = _checkout()
RESULTS = ROOT / "docs" / "results.md"
HEADER = """# Measured results

Written by the scripts in `benchmarks/` (each rewrites its own section); numbers are what those runs
printed on the machine named in each section. Every quality benchmark runs on two data sets
(`--dataset`), each in its own section, which names it: HAM10000 (8,787 dermoscopic images, CC BY-NC 4.0,
Tschandl et al. 2018, doi:10.1038/sdata.2018.161; label 1 = MEL/BCC/SCC as ISIC 2024's target) and the ISIC 2024
permissive release (8,234 real SLICE-3D crops of 3D total-body photography, 235 malignant, CC-BY / CC-0, the ISIC
Archive, Kurtansky et al. 2024, doi:10.1038/s41597-024-03743-w), the seed notebook's own kind of image.
"""


def update_section(name: str, body: str) -> Path:
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_text(RESULTS, text)
    return RESULTS


def machine() -> str:
    import os

    import torch

    from ..engine.runtime import cpu_name

    host = f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, torch {torch.__version__}"
    # runs go to the GPU when there is one, so name it first
    return f"{torch.cuda.get_device_name(0)} with {host}" if torch.cuda.is_available() else host


def _describe() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or "?"
    except OSError:
        return "?"


# read when the benchmark starts: the code that ran, even if the tree changes while it runs
_START_COMMIT = _describe()


def git_commit() -> str:
    return _START_COMMIT


def shown(path: Path) -> Path:
    """A path as a section records it: relative to the checkout when inside it (no folder of this machine)."""
    path = Path(path).resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def named_paths(items: list[str], flag: str, what: str) -> dict[str, Path]:
    """NAME=PATH arguments (`flag` names them, `what` says what PATH is) as {name: path}, in the order given;
    a malformed item or a name given twice stops the script, naming it."""
    named: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{flag} {item}: expected NAME={what}")
        if name in named:
            raise SystemExit(f"{flag} {item}: the name '{name}' is given twice")
        named[name] = Path(path)
    return named


def command_line(script: str, args: argparse.Namespace, ap: argparse.ArgumentParser,
                 skip: tuple[str, ...] = ("work",)) -> str:
    """The `python benchmarks/SCRIPT.py ...` that reproduces a run, from its parsed arguments: every option that
    differs from its default, in the parser's order; a repeated option once per value ((key, value) pairs as
    KEY=VALUE). `skip`: options left out (folders of this machine)."""
    words = [f"python benchmarks/{script}.py"]
    for key, value in vars(args).items():
        # (by identity: 0 is a value to write, though 0 == False)
        if key in skip or value is None or value is False or value in ("", []) or value == ap.get_default(key):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [f"{flag} " + ("=".join(map(str, item)) if isinstance(item, tuple) else str(item)) for item in value]
        else:
            words.append(f"{flag} {value}")
    return " ".join(words)


def ham10000() -> Path:
    path = ROOT.parent / "shared" / "data" / "ham10000"
    if not (path / "manifest.csv").exists():
        sys.exit(f"{path}: the development data set is not there")
    return path
