"""What the commands show while they work: progress (a tqdm bar on a terminal, plain lines in a log)
and the lines shared by several commands."""
from __future__ import annotations

import sys
import time

import click


class _LineProgress:
    """The part of tqdm's interface used here, written as a plain line every EVERY seconds (and one
    at the end) instead of a bar: when stderr is a log file or a pipe, tqdm's carriage-return
    updates would fill it with hundreds of partial lines."""

    EVERY = 5.0

    def __init__(self, desc: str, unit: str, total: int = 0):
        self.desc, self.unit, self.total, self.n = desc, unit, total or 0, 0
        self.postfix = ""
        self._last = time.monotonic()
        self._shown = ""

    def _line(self) -> str:
        if self.total:
            return f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%){self.postfix}"
        return f"{self.desc}: {self.n} {self.unit}{self.postfix}"

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.EVERY:
            line = self._line()
            if line != self._shown and (self.n or self.total):
                click.echo(line, err=True)
                self._shown = line
            self._last = now

    def update(self, k: int = 1) -> None:
        self.n += k
        self.refresh()

    def reset(self, total: int | None = None) -> None:
        self.n, self.total = 0, total or 0

    def set_postfix(self, values: dict, refresh: bool = True) -> None:
        self.postfix = "  " + "  ".join(f"{k} {v}" for k, v in values.items())
        if refresh:
            self.refresh()

    def clear(self) -> None:
        pass

    def close(self) -> None:
        self.refresh(force=True)


def make_bar(desc: str, unit: str = "img", total: int = 0, leave: bool = True, mininterval: float = 0.5):
    """A tqdm bar on a terminal, else a line every few seconds (_LineProgress)."""
    if not sys.stderr.isatty():
        return _LineProgress(desc, unit, total)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=mininterval,
                leave=leave)


def progress_bar(desc: str):
    bar = make_bar(desc)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def epoch_echo(total: int):
    from ..workflows.train import epoch_line

    return lambda row: click.echo(epoch_line(row, total), err=True)


def metric_cell(m: dict, key: str) -> str:
    ci = m.get("ci95", {}).get(key)
    return f"{m[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
