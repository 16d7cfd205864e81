"""Reading a config: the YAML file, and one config model validated with its errors in the one
wording (wording.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Collection, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import BadInputError
from ..fileio import read_yaml
from .wording import explain


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    data = read_yaml(path, "config file") or {}
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: a config must be a mapping of keys to values")
    return data


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def validated(model: type[ConfigT], values: dict, origin: str = "flags", flag_keys: Collection[str] | None = None) -> ConfigT:
    """One config model validated, its errors in the one template (wording.explain); flag_keys: the
    keys that came from flags (named --like-this in errors; default: all of them when origin is flags)."""
    if flag_keys is None:
        flag_keys = tuple(values) if origin == "flags" else ()
    try:
        return model(**values)
    except ValidationError as e:
        raise explain(e, origin, model, flag_keys) from None
    except BadInputError as e:  # raised inside a validator
        raise BadInputError(f"{origin}: {e}") from None
