"""Flags made from a config model's fields (a key added there is a flag here with no second list to
keep in step), and the values given turned back into the model's keys."""
from __future__ import annotations

import types
import typing
from typing import Any, Callable, TypeVar

import click
from pydantic import BaseModel

from ..config.keys import BARE, FLAGS, meta, nested_model

ConfigT = TypeVar("ConfigT", bound=BaseModel)
NESTED = "__"  # the dest of a nested key's flag: synthetic__n is --synthetic-n, key synthetic.n


def max_pixels_option(func: Callable) -> Callable:
    from ..config.commands import MAX_PIXELS_HELP
    from ..data.images import DEFAULT_MAX_PIXELS

    return click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1),
                        help=MAX_PIXELS_HELP)(func)


def distinct_ints(text: str, hint: str) -> list[int]:
    """'0,1,2' as [0, 1, 2]: a comma-separated option of distinct integers (seeds, folds)."""
    try:
        values = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        values = []
    if not values or len(set(values)) != len(values):
        raise click.BadParameter(f"expected distinct integers such as 0,1,2, got '{text}'", param_hint=hint)
    return values


def _plain(annotation: Any) -> Any:
    """Optional[X] -> X: a flag of type X, None when not given."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _option(flag: str, dest: str, field: Any, help_text: str, switch: bool) -> Callable:
    """One click option for one field; click checks the type (int, float, a choice), the model the rest."""
    ann = _plain(field.annotation)
    if ann is bool:
        if switch:  # a command setting that is off unless given: --key alone
            return click.option(f"--{flag}", dest, is_flag=True, default=None, help=help_text)
        return click.option(f"--{flag}/--no-{flag}", dest, default=None, help=help_text)
    if typing.get_origin(ann) is list:  # repeatable
        return click.option(f"--{flag}", dest, multiple=True, default=(), help=help_text + " (repeatable)")
    bare = meta(field, BARE)
    kind: Any = str
    callback = None
    if ann is int:
        kind = int
    elif ann is float and bare is None:  # a bare flag's value is text ("0.999") until the model reads it
        kind = float
    elif typing.get_origin(ann) is typing.Literal:
        values = typing.get_args(ann)
        kind = click.Choice([str(a) for a in values])
        if all(isinstance(a, int) for a in values):  # Literal[32, 64, 128]: the model takes the integer
            callback = lambda ctx, param, v: None if v is None else int(v)  # noqa: E731
    extra: dict = {"is_flag": False, "flag_value": bare} if bare is not None else {}
    return click.option(f"--{flag}", dest, type=kind, default=None, help=help_text, callback=callback, **extra)


def model_options(model_cls: type[BaseModel], skip: tuple[str, ...] = (), from_file: bool = True) -> Callable:
    """One flag per field of a pydantic config model, from its fields and descriptions. Flags not
    given stay None (or an empty tuple for a list), and given() leaves them out, so the model's
    defaults (and a config file's values) stand. from_file: the values may also come from a config
    file (boolean keys then get --key/--no-key, and the help says 'config default'); else a boolean
    that is off by default is a bare switch."""
    label = "config default" if from_file else "default"

    def wrap(func: Callable) -> Callable:
        for key, field in reversed(list(model_cls.model_fields.items())):
            if key in skip:
                continue
            nested, flags = nested_model(field.annotation), meta(field, FLAGS)
            if nested is not None and flags:  # a mapping in the config, a flag per key here
                for sub, sub_field in reversed(list(nested.model_fields.items())):
                    help_text = (sub_field.description or "").replace("%%", "%")
                    func = _option(flags[sub], key + NESTED + sub, sub_field, help_text, switch=False)(func)
                continue
            default = "[]" if field.default_factory is list else field.default
            switch = not from_file and field.default is False
            shown = (" [required]" if field.is_required() else "" if default is None or switch
                     else f" [{label}: {default}]")
            help_text = (field.description or "").replace("%%", "%") + shown
            func = _option(key.replace("_", "-"), key, field, help_text, switch)(func)
        return func

    return wrap


def config_options(func: Callable) -> Callable:
    from ..config import ExperimentConfig

    return model_options(ExperimentConfig)(func)


def given(values: dict, model_cls: type[BaseModel] | None = None) -> dict:
    """The flags given, as the model's keys: those not given left out (so a config file's values or
    the model's defaults stand), a nested mapping's flags gathered into their mapping."""
    from ..config import ExperimentConfig
    from ..config.keys import flag_name

    model_cls = model_cls or ExperimentConfig
    out: dict = {}
    for k, v in values.items():
        if v is None or v == ():  # not given (a repeatable flag gives an empty tuple)
            continue
        if NESTED in k:
            top, sub = k.split(NESTED, 1)
            out.setdefault(top, {})[sub] = v
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    for top, mapping in [(k, v) for k, v in out.items() if isinstance(v, dict) and k in model_cls.model_fields]:
        nested = nested_model(model_cls.model_fields[top].annotation)
        missing = [s for s, f in nested.model_fields.items() if f.is_required() and s not in mapping] if nested else []
        if missing:  # e.g. --synthetic-n without --synthetic: say which flag is needed, not which key
            names = " and ".join(flag_name(f"{top}.{s}", model_cls) for s in mapping)
            raise click.UsageError(f"{names} needs {flag_name(f'{top}.{missing[0]}', model_cls)}")
    return out


def checked(model_cls: type[ConfigT], values: dict, skip: tuple[str, ...] = ()) -> ConfigT:
    """A command's settings from its flags (those given; the model's defaults for the rest), checked by
    the model: a bad value is one line naming the flag, what it expects and what it got."""
    from ..config import validated

    return validated(model_cls, given({k: v for k, v in values.items() if k not in skip}, model_cls), "flags")
