"""The one wording of every config error: pydantic's errors, whatever their type, as one line
'KEY: expected X, got Y', KEY in the form the user wrote it (--flag-name for flags, config key
'name' in FILE for a file), with the closest known key or value where one is near."""
from __future__ import annotations

import types
import typing
from typing import Any, Collection, Literal, Union

import annotated_types
from pydantic import BaseModel, ValidationError, ValidationInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from ..errors import BadInputError, closest, shown
from .keys import BARE, flag_name, meta, nested_model


def _is_number_type(annotation: Any) -> bool:
    """int or float, alone or in a Union (Optional[int], Union[int, Literal['all']], ...)."""
    if annotation in (int, float):
        return True
    return typing.get_origin(annotation) in (Union, types.UnionType) and any(
        _is_number_type(a) for a in typing.get_args(annotation))


def refuse_bool_for_number(model: type[BaseModel], v: Any, info: ValidationInfo) -> Any:
    """pydantic reads `epochs: true` as 1 epoch; a boolean where a number belongs is a mistake
    (numeric strings, as flags give them, are still read as numbers). A key with a bare-flag value
    takes true for it (`ema: true` = 0.999, as `--ema` alone)."""
    name = info.field_name  # always set in a field validator
    field = model.model_fields[name] if name is not None else None
    if isinstance(v, bool) and field is not None and meta(field, BARE) is None and _is_number_type(field.annotation):
        raise PydanticCustomError("bool_not_number", "a boolean is not a number")
    return v



def _field(loc: tuple, config: type[BaseModel]) -> tuple[str, Any]:
    """(dotted key, pydantic FieldInfo or None) of an error location such as ('synthetic', 'n') or
    ('n_malignant', 'int') (a Union's branch tag after the key), in `config`."""
    model: Any = config
    parts, field = [], None
    for part in loc:
        fields = getattr(model, "model_fields", {}) if isinstance(model, type) else {}
        if part not in fields:
            break  # a Union branch, list index, ...: the key is what came before
        parts.append(str(part))
        field = fields[part]
        model = nested_model(field.annotation)
    return ".".join(parts), field


def _known_keys(loc: tuple, config: type[BaseModel]) -> tuple[str, ...]:
    """The keys known where an unknown key sits: the config's, or a nested mapping's."""
    keys = tuple(config.model_fields)
    _, parent = _field(tuple(loc)[:-1], config)
    if parent is None:
        return keys
    nested = nested_model(parent.annotation)
    return tuple(nested.model_fields) if nested else keys


def _describe(annotation: Any) -> str:
    """What a type accepts, in words: 'an integer', 'one of adam, adamw, sgd', 'an integer or 'all''."""
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "text"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping with keys " + ", ".join(annotation.model_fields)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return f"'{args[0]}'" if len(args) == 1 else "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is list and args:
        return f"a list of {_describe(args[0])}"
    return str(annotation)


_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "<="),
           (annotated_types.Lt, "lt", "<"))


def _expected(field: Any) -> str:
    """The field's type with its bounds, e.g. 'an integer >= 1' or 'a number >= 0 and < 0.5'."""
    bounds = [f"{sign} {getattr(m, attr)}" for m in field.metadata for kind, attr, sign in _BOUNDS if isinstance(m, kind)]
    optional = type(None) in typing.get_args(field.annotation)
    return (_describe(field.annotation) + (" " + " and ".join(bounds) if bounds else "")
            + (" (or nothing)" if optional else ""))


def _shown(value: Any) -> str:
    """A value as the user typed it: true/false, 'text', numbers as they are."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return shown(value)
    if value is None:
        return "nothing"
    return shown(value)


def _explain_key(key: str, field: Any, errors: list[ErrorDetails], where: str, config: type[BaseModel]) -> str:
    """One message for all of a key's errors (a Union gives one per branch): the key, what it
    expects and what it got."""
    first = errors[0]
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'{closest(key.rsplit('.', 1)[-1], _known_keys(first['loc'], config))}"
    for e in errors:
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] in ("value_error", "assertion_error") and "--" in msg:
            return msg  # our own validators' messages already name the parameter, expected and got
    got = "nothing" if first["type"] == "missing" else _shown(first.get("input"))
    if field is None:  # the config as a whole (a model validator) or an unknown location
        msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in errors)
        return f"{where}: {msgs} (got {got})"
    hint = ""
    if any(e["type"] == "literal_error" for e in errors) and isinstance(first.get("input"), str):
        known = [str(a) for a in typing.get_args(field.annotation) if typing.get_origin(field.annotation) is Literal]
        hint = closest(first["input"], known)
    return f"{where}: expected {_expected(field)}, got {got}{hint}"


def explain(err: ValidationError, origin: str, config: type[BaseModel], flag_keys: Collection[str] = ()) -> BadInputError:
    """Every pydantic error, whatever its type, as 'KEY: expected X, got Y', KEY in the form the
    user wrote it: --flag-name for flags, config key 'name' in ORIGIN for a file."""
    by_key: dict[str, tuple[Any, list[ErrorDetails]]] = {}
    for e in err.errors():
        key, field = _field(tuple(e["loc"]), config)
        if e["type"] == "extra_forbidden":
            key = ".".join(str(p) for p in e["loc"])
        by_key.setdefault(key or "config", (field, []))[1].append(e)
    lines = []
    for key, (field, errors) in by_key.items():
        from_flags = origin == "flags" or key.split(".")[0] in flag_keys
        where = flag_name(key, config) if from_flags else f"{origin}: config key '{key}'"
        if field is None:  # the config as a whole: no key to name
            where = origin
        line = _explain_key(key, field, errors, where, config)
        unknown = errors[0]["type"] == "extra_forbidden"
        if unknown or not (from_flags or line.startswith(where)):
            line = f"{origin}: {line}"  # say which file (or 'flags') an unknown key or our own message is about
        lines.append(line)
    return BadInputError("; ".join(lines))

