"""Declared plugin parameters: a dataclass per plugin, parsed strictly.

Unknown names are refused with a did-you-mean, values are converted to the declared
type (``"0.01"`` from the command line becomes a float), and the dataclass's own
``check()`` validates ranges with a clear message. Nothing is swallowed by ``**kwargs``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from arena.errors import ArenaError, UnknownNameError

P = TypeVar("P")


@dataclasses.dataclass(frozen=True)
class NoParams:
    """A plugin without parameters."""


def parse_params(params_type: type[P], raw: Mapping[str, Any] | None, owner: str) -> P:
    """Build ``params_type`` from ``raw``, converting and validating every value.

    ``owner`` names the plugin in error messages, e.g. ``"attack 'rtal'"``.
    """
    raw = dict(raw or {})
    fields = {field.name: field for field in dataclasses.fields(params_type)}
    hints = typing.get_type_hints(params_type)
    values = {}
    for name, value in raw.items():
        if name not in fields:
            known = ", ".join(fields) or "none"
            raise UnknownNameError(
                f"parameter of {owner}", name, fields, hint=f"its parameters: {known}"
            )
        try:
            values[name] = _convert(value, hints[name])
        except (TypeError, ValueError) as error:
            raise ArenaError(f"{owner}: parameter {name!r}: {error}") from None
    params = params_type(**values)
    check = getattr(params, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as error:
            raise ArenaError(f"{owner}: {error}") from None
    return params


def params_to_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


def describe_params(params_type: type) -> str:
    """``lr=0.01 epochs=None`` for listings."""
    defaults = params_type()
    return " ".join(
        f"{field.name}={getattr(defaults, field.name)!r}"
        for field in dataclasses.fields(params_type)
    )


def _convert(value: Any, annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if annotation is float:
        return _finite_float(value)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")
    raise TypeError(f"unsupported parameter type {annotation!r}")


def _finite_float(value: Any) -> float:
    # float() accepts "nan" and "inf"; a NaN learning rate trains a NaN model that would
    # be stored and ranked like any other, so only finite numbers are parameters.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    except OverflowError:  # an int beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number
