"""Finding `Ref` and `FilePath` fields in a step's Params model."""

from __future__ import annotations

import functools
import typing
from typing import Any

from pydantic import BaseModel

from synthforge.stepapi import FILE, REF


def _mentions(annotation: Any, marker: object) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        return any(m is marker for m in metadata) or _mentions(base, marker)
    return any(_mentions(arg, marker) for arg in typing.get_args(annotation))


@functools.lru_cache(maxsize=None)
def _marked(params_model: type[BaseModel], marker: object) -> tuple[str, ...]:
    """Fields of a model class marked `marker`: the same for every instance, so found once per class."""
    return tuple(name for name, info in params_model.model_fields.items()
                 if any(m is marker for m in info.metadata) or _mentions(info.annotation, marker))


def marked_fields(params_model: type[BaseModel], marker: object) -> list[str]:
    return list(_marked(params_model, marker))


def ref_fields(params_model: type[BaseModel]) -> list[str]:
    return marked_fields(params_model, REF)


def strings_in(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """Every string inside a field's value with its sub-path (str, list or dict of str)."""
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, (list, tuple)):
        return [item for i, v in enumerate(value) for item in strings_in(v, path + (i,))]
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in strings_in(v, path + (k,))]
    return []


def map_leaves(value: Any, fn: typing.Callable[[Any], Any], leaf: type = str) -> Any:
    """`value` with every `leaf`-typed item inside lists and dicts replaced by fn(item), shape kept."""
    if isinstance(value, leaf):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return [map_leaves(v, fn, leaf) for v in value]
    if isinstance(value, dict):
        return {k: map_leaves(v, fn, leaf) for k, v in value.items()}
    return value


def map_strings(value: Any, fn: typing.Callable[[str], Any]) -> Any:
    return map_leaves(value, fn, str)


def file_locations(params: BaseModel, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """(path, value) of every FilePath string in `params`, nested models included."""
    found = []
    file_fields = _marked(type(params), FILE)
    for name in type(params).model_fields:
        value = getattr(params, name)
        if name in file_fields:
            found += [(path + (name,) + sub, text) for sub, text in strings_in(value)]
        else:
            found += _nested_file_locations(value, path + (name,))
    return found


def _nested_file_locations(value: Any, path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    if isinstance(value, BaseModel):
        return file_locations(value, path)
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _nested_file_locations(v, path + (k,))]
    if isinstance(value, (list, tuple)):
        return [item for i, v in enumerate(value) for item in _nested_file_locations(v, path + (i,))]
    return []


def set_at(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of nested dicts/lists `data` with `value` at `path`."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(data, list):
        copy = list(data)
        copy[head] = set_at(copy[head], rest, value)
        return copy
    copy = dict(data)
    copy[head] = set_at(copy[head], rest, value)
    return copy
