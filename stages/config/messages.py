"""pydantic's ValidationError as one line a user can act on: the dotted key (export.opset, bench.targets[1]),
what was expected and what was found, or the allowed keys or values. The first error is reported, in the
order a reader checks a file: at each level unknown keys, then the keys in schema order, then the checks
across keys (__post_init__)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import pydantic
from pydantic_core import ArgsKwargs

from stages.config.schema import yaml_fields

_NOTHING = object()
_EXPECTED = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _plain_type(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def type_name(tp: Any) -> str:
    """`list[int] | str`, `str | None`: an annotation as a user reads it (no Annotated/Strict noise)."""
    tp = _plain_type(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(type_name(a) for a in args)}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _index(value: Any, key: Any) -> Any:
    if isinstance(value, dict):
        return value.get(key, _NOTHING)
    if isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
        return value[key]
    return _NOTHING


@dataclasses.dataclass
class _Spot:
    """Where an error's loc leads in the schema and the data."""

    key: str = ""
    tp: Any = None
    value: Any = None
    order: tuple = ()
    unknown: Any = _NOTHING  # a key the schema at `tp` does not have


def _step(spot: _Spot, el: Any, next_el: Any) -> bool:
    """Move `spot` one loc element down; False where the walk stops (an unknown key, a union's arm)."""
    tp = _plain_type(spot.tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        names = yaml_fields(tp)
        if el not in names:
            spot.unknown, spot.order = el, (*spot.order, -1)
            return False
        spot.tp, spot.order = typing.get_type_hints(tp, include_extras=True)[el], (*spot.order, names.index(el))
        spot.key = f"{spot.key}.{el}" if spot.key else str(el)
    elif origin is list:
        spot.tp, spot.key, spot.order = args[0], f"{spot.key}[{el}]", (*spot.order, el)
    elif origin is dict:
        pos = list(spot.value).index(el) if isinstance(spot.value, dict) and el in spot.value else 0
        spot.order = (*spot.order, pos)
        if next_el == "[key]":  # the mapping's key itself is wrong
            spot.tp, spot.value = args[0], el
            return False
        spot.tp, spot.key = args[1], f"{spot.key}.{el}" if spot.key else str(el)
    else:
        return False
    spot.value = _index(spot.value, el)
    return True


def _locate(root: type, data: Any, err: dict, prefix: str) -> _Spot:
    spot = _Spot(key=prefix.rstrip("."), tp=root, value=data)
    loc = err["loc"]
    for i, el in enumerate(loc):
        if not _step(spot, el, loc[i + 1] if i + 1 < len(loc) else None):
            break
    if spot.value is _NOTHING or isinstance(spot.value, ArgsKwargs):
        spot.value = err.get("input")
    if err["type"] in ("value_error", "assertion_error"):
        spot.order = (*spot.order, math.inf)  # checks across keys come after the keys themselves
    return spot


def _describe(spot: _Spot, err: dict) -> str:
    kind, key = err["type"], spot.key
    if spot.unknown is not _NOTHING:
        where = f"{key}.{spot.unknown}" if key else str(spot.unknown)
        return f"unknown key '{where}'; allowed keys here: {', '.join(yaml_fields(_plain_type(spot.tp)))}"
    if kind in ("missing", "missing_argument"):
        return f"missing required key '{key}'"
    if kind in ("value_error", "assertion_error"):
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        prefix = f"{key}." if key else ""
        return msg if not prefix or msg.startswith(prefix) else prefix + msg
    tp, value = _plain_type(spot.tp), spot.value
    got = f"{type(value).__name__} {value!r}"
    if typing.get_origin(tp) is typing.Literal:
        if isinstance(value, str):
            return f"{key}: {value!r} is not one of {', '.join(map(str, typing.get_args(tp)))}"
        return f"{key}: expected a string, got {got}"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"{key}: expected a mapping of {', '.join(yaml_fields(tp))}, got {type(value).__name__}"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return f"{key}: expected {type_name(tp)}, got {got}"
    expected = {list: "a list", dict: "a mapping"}.get(typing.get_origin(tp)) or _EXPECTED.get(tp)
    return f"{key}: expected {expected}, got {got}" if expected else f"{key}: {err['msg']}"


def describe(error: pydantic.ValidationError, root: type, data: Any = _NOTHING, prefix: str = "") -> str:
    """The first of `error`'s problems (validating `data` as `root`, keys under `prefix`), as one line."""
    spots = [(_locate(root, data, e, prefix), e) for e in error.errors(include_url=False)]
    spot, err = min(spots, key=lambda s: s[0].order)
    return _describe(spot, err)


def error_text(e: Exception, cls: type) -> str:
    """An error from constructing a `cls` directly, as one line (str(e) for anything but a ValidationError)."""
    return describe(e, cls) if isinstance(e, pydantic.ValidationError) else str(e)
