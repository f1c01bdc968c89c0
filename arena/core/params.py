"""Declared plugin parameters: a dataclass per plugin, parsed strictly.

Unknown names are refused with a did-you-mean, values are converted to the declared
type (``"0.01"`` from the command line becomes a float), the bounds and choices each
field declares with ``param`` are enforced, and the dataclass's own ``check()`` runs last,
for the rules that need code (one field against another). Nothing is swallowed by
``**kwargs``. ``arena list`` prints each field's type, default, constraint and help.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from arena.util.errors import ArenaError, UnknownNameError

P = TypeVar("P")

# A ``param`` field's bounds by metadata key: the symbol printed and the test applied.
_BOUNDS = {
    "min": (">=", operator.ge),
    "above": (">", operator.gt),
    "max": ("<=", operator.le),
    "below": ("<", operator.lt),
}


@dataclasses.dataclass(frozen=True)
class NoParams:
    """A plugin without parameters."""


def param(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    below: float | None = None,
    choices: Iterable[Any] | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A parameter field: its default, one line of help and the values it accepts.

    ``min`` and ``max`` are inclusive bounds, ``above`` and ``below`` exclusive ones
    (``param(0.01, help="learning rate", above=0)``); ``choices`` lists the accepted
    values of a field whose type does not (a ``Literal`` already does). ``None`` always
    passes, for fields typed ``X | None``. The parser enforces them after converting the
    value and before ``check()``; ``arena list`` prints them beside the help.
    """
    if not help.strip():
        raise TypeError("param() needs a help text: it is what `arena list` prints")
    bounds = {"min": min, "above": above, "max": max, "below": below}
    for name, value in bounds.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"param() bound {name}={value!r} is not a number")
    if min is not None and above is not None:
        raise TypeError("param() takes min (inclusive) or above (exclusive), not both")
    if max is not None and below is not None:
        raise TypeError("param() takes max (inclusive) or below (exclusive), not both")
    metadata: dict[str, Any] = {"help": help.strip()}
    metadata.update((name, value) for name, value in bounds.items() if value is not None)
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


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
    for field in fields.values():
        broken = _constraint_broken(field, hints[field.name], getattr(params, field.name))
        if broken:
            raise ArenaError(f"{owner}: {field.name} {broken}")
    check = getattr(params, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as error:
            raise ArenaError(f"{owner}: {error}") from None
    return params


def params_to_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


@dataclasses.dataclass(frozen=True)
class ParamDoc:
    """One parameter as ``arena list`` prints it."""

    name: str
    type: str  # "int | None"
    default: str  # repr of the default
    constraint: str  # "[1, 100]", "> 0", "one of 'sgd', 'adam'"; "" when any value goes
    help: str  # "" for a plain field without ``param``


def document_params(params_type: type) -> list[ParamDoc]:
    """Every field of ``params_type`` with its type, default, constraint and help."""
    defaults = params_type()
    hints = typing.get_type_hints(params_type)
    return [
        ParamDoc(
            name=field.name,
            type=_type_name(hints[field.name]),
            default=repr(getattr(defaults, field.name)),
            constraint=describe_constraint(field, hints[field.name]),
            help=field.metadata.get("help", ""),
        )
        for field in dataclasses.fields(params_type)
    ]


def describe_constraint(field: dataclasses.Field, annotation: Any = None) -> str:
    """The values ``field`` accepts, in words: ``[0, 1)``, ``>= 1``, ``one of 'a', 'b'``;
    ``""`` when it declares none (and its type, ``annotation``, lists no choices)."""
    choices = field.metadata.get("choices") or _literal_choices(annotation)
    parts = [_bounds_text(field.metadata)]
    if choices:
        parts.append("one of " + ", ".join(map(repr, choices)))
    return "; ".join(part for part in parts if part)


def _bounds_text(metadata: Mapping[str, Any]) -> str:
    """``[0, 10,000]``, ``(0, 1]``, ``> 0`` or ``""``."""
    lower = next((key for key in ("min", "above") if key in metadata), None)
    upper = next((key for key in ("max", "below") if key in metadata), None)
    if lower and upper:
        opening = "[" if lower == "min" else "("
        closing = "]" if upper == "max" else ")"
        return f"{opening}{metadata[lower]:,}, {metadata[upper]:,}{closing}"
    if lower or upper:
        key = lower or upper
        return f"{_BOUNDS[key][0]} {metadata[key]:,}"
    return ""


def _constraint_broken(field: dataclasses.Field, annotation: Any, value: Any) -> str | None:
    """What ``value`` breaks of ``field``'s declared bounds and choices, in words
    (``must lie in [1, 100], got 0``), or None. ``None`` breaks nothing."""
    metadata = field.metadata
    if value is None:
        return None
    optional = " (or none)" if type(None) in get_args(annotation) else ""
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(map(repr, choices))}{optional}, got {value!r}"
    bounds = [(test, metadata[key]) for key, (_, test) in _BOUNDS.items() if key in metadata]
    if not all(test(value, bound) for test, bound in bounds):
        interval = _bounds_text(metadata)
        rule = f"lie in {interval}" if interval[0] in "[(" else f"be {interval}"
        return f"must {rule}{optional}, got {value!r}"
    return None


def _literal_choices(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        for option in get_args(annotation):
            if get_origin(option) is Literal:
                return get_args(option)
    return ()


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) in (Union, types.UnionType):
        return " | ".join(_type_name(option) for option in get_args(annotation))
    if get_origin(annotation) is Literal:
        return " | ".join(sorted({type(choice).__name__ for choice in get_args(annotation)}))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


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
