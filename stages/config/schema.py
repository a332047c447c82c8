"""The schema layer under every config section: pydantic v2 dataclasses whose scalars are as strict as a
hand-written YAML checker would be (an int is never a bool, a float or the string '17'; a float takes an
int; a string is never a number, except as a list item: converter flags like [--weightQuantBits, 8]).

`schema` turns a class into such a dataclass: plain `int`, `float`, `str`, `bool`, `list[...]` and
`dict[...]` annotations are made strict, nested dataclasses too (a stdlib one, like the device-side
StopRule, gets a strict pydantic subclass of the same name). Unknown keys are rejected.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Annotated, Any

import pydantic
from pydantic import BeforeValidator, ConfigDict, Strict
from pydantic.dataclasses import is_pydantic_dataclass

CONFIG = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
SCALARS = {t: Annotated[t, Strict()] for t in (int, float, str, bool)}


def _number_as_text(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


LIST_ITEM_STR = Annotated[str, Strict(), BeforeValidator(_number_as_text)]


def strict(tp: Any, in_list: bool = False) -> Any:
    """The annotation `tp` with strict scalars (and strict copies of stdlib dataclasses)."""
    if tp is str and in_list:
        return LIST_ITEM_STR
    if tp in SCALARS:
        return SCALARS[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return list[strict(args[0], in_list=True)]
    if origin is dict:
        return dict[strict(args[0]), strict(args[1])]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(strict(a) for a in args)]  # noqa: UP007 (built from a tuple)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and not is_pydantic_dataclass(tp):
        return strict_copy(tp)
    return tp


def schema(cls: type) -> type:
    """Decorator: `cls` as a strict pydantic dataclass (positional and keyword construction, dataclasses.fields,
    asdict and __post_init__ checks all work as on a stdlib dataclass)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    cls.__annotations__ = {k: strict(hints[k]) for k in cls.__dict__.get("__annotations__", {})}
    return pydantic.dataclasses.dataclass(cls, config=CONFIG)


@functools.cache
def strict_copy(cls: type) -> type:
    """A strict pydantic subclass of the stdlib dataclass `cls`, same name and fields (for load_typed)."""
    ns: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__annotations__": {},
                          "__reduce__": lambda self: (_rebuild, (cls, dict(self.__dict__)))}
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        ns["__annotations__"][f.name] = strict(hints[f.name])
        ns[f.name] = dataclasses.field(default=f.default, default_factory=f.default_factory, init=f.init,
                                       repr=f.repr, compare=f.compare)
    return pydantic.dataclasses.dataclass(types.new_class(cls.__name__, (cls,), exec_body=lambda d: d.update(ns)),
                                          config=CONFIG)


def _rebuild(cls: type, state: dict) -> Any:
    """Unpickle a strict copy's instance (pickle finds a class by its name, which names the original)."""
    obj = object.__new__(strict_copy(cls))
    obj.__dict__.update(state)
    return obj


def as_schema(cls: type) -> type:
    """`cls` if it is a pydantic dataclass already, else its strict copy."""
    return cls if is_pydantic_dataclass(cls) else strict_copy(cls)


def yaml_fields(cls: type) -> list[str]:
    """The keys a YAML mapping for `cls` may hold (init=False fields, like `source`, are set by the loader)."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
