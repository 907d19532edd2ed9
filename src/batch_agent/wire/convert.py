"""The parser of the task models (`task.py`): a frozen dataclass read from a JSON object, each
field from its camelCase wire name (or its snake_case one, as proto3 JSON parsers accept) by the
converter its annotation names: strings, booleans, `Annotated[int, "int32" | "int64"]` (a JSON
number or a decimal string), `Annotated[timedelta, "duration"]`, lists, string maps, nested
dataclasses, and the types in `CONVERTERS`. Unknown fields are ignored; JSON null is no value.
Never raises for bad input: each problem is appended as `path: what is wrong`, and the value
is `BAD`. Knows nothing of Batch.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

from batch_agent.wire.encoding import json_path, parse_duration, parse_integer, quote

Path = tuple[int | str, ...]
# A converter: (value, its path, the problems so far) -> the value, or BAD (a problem added).
Converter = Callable[[Any, Path, list[str]], Any]
BAD: Any = object()
_BOOLEANS = {
    **dict.fromkeys(("1", "on", "t", "true", "y", "yes"), True),
    **dict.fromkeys(("0", "off", "f", "false", "n", "no"), False),
}
# Converters of the types that bring their own (an enum with its proto3 zero value, say).
CONVERTERS: dict[Any, Converter] = {}
# (python name, wire name, converter, required) of each field of each message, made at first
# use from the dataclass fields and their annotations.
_FIELDS: dict[type, list[tuple[str, str, Converter, bool]]] = {}


def message(cls: type, value: Any, path: Path, problems: list[str]) -> Any:
    if not isinstance(value, dict):
        problems.append(f"{json_path(path)}: {quote(value)} is not an object")
        return BAD
    before = len(problems)
    values: dict[str, Any] = {}
    for name, wire, convert, required in _FIELDS.get(cls) or _fields(cls):
        key = wire if wire in value else name
        item = value.get(key)
        if item is None:  # absent, or JSON null: the default
            if required:
                problems.append(f"{json_path((*path, wire))}: required")
            continue
        converted = convert(item, (*path, key), problems)
        if converted is not BAD:
            values[name] = converted
    return cls(**values) if len(problems) == before else BAD


def _fields(cls: type) -> list[tuple[str, str, Converter, bool]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    _FIELDS[cls] = fields = [
        (f.name, _camel(f.name), _converter(hints[f.name]), _required(f))
        for f in dataclasses.fields(cls)
    ]
    return fields


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _converter(annotation: Any) -> Converter:
    """The converter for a field annotated `annotation` (Optional is JSON null: no value)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):  # `X | None`: null is no value anyway
        return _converter(next(a for a in args if a is not type(None)))
    if origin is Annotated:
        kind = annotation.__metadata__[0]
        return _duration if kind == "duration" else _integer(kind)
    if origin is list:
        return _list(_converter(args[0]))
    if origin is dict:
        return _string_map
    if annotation is str:
        return _string
    if annotation is bool:
        return _boolean
    if annotation in CONVERTERS:
        return CONVERTERS[annotation]
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        cls = annotation
        return lambda value, path, problems: message(cls, value, path, problems)
    raise TypeError(f"no converter for {annotation!r}")


def _string(value: Any, path: Path, problems: list[str]) -> Any:
    if isinstance(value, str):
        return value
    problems.append(f"{json_path(path)}: {quote(value)} is not a string")
    return BAD


def _boolean(value: Any, path: Path, problems: list[str]) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _BOOLEANS:
        return _BOOLEANS[value.lower()]
    problems.append(f"{json_path(path)}: {quote(value)} is not a boolean")
    return BAD


def _integer(kind: str) -> Converter:
    def convert(value: Any, path: Path, problems: list[str]) -> Any:
        try:
            return parse_integer(value, kind)
        except ValueError as error:
            problems.append(f"{json_path(path)}: {error}")
            return BAD

    return convert


def _duration(value: Any, path: Path, problems: list[str]) -> Any:
    try:
        return parse_duration(value)
    except ValueError as error:
        problems.append(f"{json_path(path)}: {error}")
        return BAD


def _list(item: Converter) -> Converter:
    def convert(value: Any, path: Path, problems: list[str]) -> Any:
        if not isinstance(value, list):
            problems.append(f"{json_path(path)}: {quote(value)} is not a list")
            return BAD
        items = [item(element, (*path, i), problems) for i, element in enumerate(value)]
        return BAD if any(element is BAD for element in items) else items

    return convert


def _string_map(value: Any, path: Path, problems: list[str]) -> Any:
    if not isinstance(value, dict):
        problems.append(f"{json_path(path)}: {quote(value)} is not an object")
        return BAD
    bad = [key for key, item in value.items() if not isinstance(item, str)]
    for key in bad:
        problems.append(f"{json_path((*path, key))}: {quote(value[key])} is not a string")
    return BAD if bad else dict(value)
