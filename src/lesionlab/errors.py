"""The few error types lesionlab raises for problems a user can fix.

Every message names the file, row or parameter, what was expected and what was found,
so the CLI can print it as is (no traceback).
"""
from __future__ import annotations

import difflib
from typing import Iterable


class LesionLabError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class BadInputError(LesionLabError):
    """A file, row, value or parameter that is not what lesionlab expects."""


class NotEnoughDataError(LesionLabError):
    """A ratio, split size or sample that the data cannot supply."""


class LeakError(LesionLabError):
    """Something would put the same patient, lesion or image on two sides of a split."""


class ExistsError(LesionLabError):
    """The output location already holds something lesionlab will not overwrite silently."""


def closest(name: str, known: Iterable[str]) -> str:
    """A ' (did you mean X?)' hint for a misspelt name, or ''."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def preview(items: Iterable[object], limit: int = 10) -> str:
    """A short, comma-separated listing: the first `limit` items and how many more."""
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def first_line(exc: BaseException, limit: int | None = 300) -> str:
    """An exception's first line of text for a one-line message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
