"""The few error types lesionlab raises for problems a user can fix.

Every message names the file, row or parameter, what was expected and what was found,
so the CLI can print it as is (no traceback).
"""
from __future__ import annotations

import difflib
import reprlib
from typing import Any, Iterable


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


def check_at_least(value: int, minimum: int, flag: str) -> int:
    """A whole number of at least `minimum` for parameter `flag` (e.g. --batch-size), else its error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadInputError(f"{flag} must be a whole number of at least {minimum}, got {shown(value)}")
    return value


def first_line(exc: BaseException, limit: int | None = 300) -> str:
    """An exception's first line of text for a one-line message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


# reprlib's bounded repr: at most a few items per level and a few levels, so a value as large as
# memory (a YAML alias bomb, a 20000-item list) is never turned into text whole, only its start
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict, _SHOWN.maxset = 3, 6, 6, 6, 6
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 60, 60, 40


def shown(value: Any, limit: int = 80) -> str:
    """A value for an error message: its repr, cut to `limit` characters without building it whole."""
    text = _SHOWN.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
