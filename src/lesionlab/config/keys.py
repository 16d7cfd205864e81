"""What a config key is besides its type and default, declared on the field itself
(`Field(json_schema_extra=...)`) so that every reader (the CLI's flags, the error wording, the
search's space) takes it from the one place:

- BARE: the value a flag given bare stands for (`--ema` alone = 0.999; `--pretrained` alone = true);
- SEARCHABLE: False for keys a search may not vary (where the data are, how runs execute);
- FLAGS: a nested mapping's keys as flags of their own (`synthetic: {data, n}` is `--synthetic`
  and `--synthetic-n`).
"""
from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonDict

BARE = "bare"
SEARCHABLE = "searchable"
FLAGS = "flags"
FIXED: JsonDict = {SEARCHABLE: False}  # the metadata of a key a search may not vary


def meta(field: FieldInfo | None, name: str, default: Any = None) -> Any:
    """One metadata entry of a field (json_schema_extra), or `default`."""
    extra = field.json_schema_extra if field is not None else None
    return extra.get(name, default) if isinstance(extra, dict) else default


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds (itself, or inside an Optional/Union), if any."""
    return next((a for a in (annotation, *typing.get_args(annotation))
                 if isinstance(a, type) and issubclass(a, BaseModel)), None)


def bare_values(model: type[BaseModel]) -> dict[str, str]:
    """{key: the value its flag stands for when given bare}."""
    return {key: value for key, field in model.model_fields.items() if (value := meta(field, BARE)) is not None}


def fixed_keys(model: type[BaseModel]) -> tuple[str, ...]:
    """The keys a search may not vary."""
    return tuple(key for key, field in model.model_fields.items() if meta(field, SEARCHABLE, True) is False)


def flag_name(key: str, model: type[BaseModel]) -> str:
    """The flag of a (dotted) key: `batch_size` -> --batch-size, `synthetic.n` -> --synthetic-n."""
    top, _, sub = key.partition(".")
    flags = meta(model.model_fields.get(top), FLAGS) or {}
    return "--" + (flags.get(sub, key) if sub else top).replace("_", "-")
