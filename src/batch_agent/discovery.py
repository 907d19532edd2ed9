"""Google's discovery documents (Batch v1, Logging v2) and a strict checker of JSON values
against their schemas.

The documents are the ones shipped inside google-api-python-client, each read once from the
installed package (no network). `validate` only reports: it never coerces, fills defaults or
raises on a bad value. It is stricter than Google's servers on purpose (unknown fields, JSON
null and int64 as numbers are errors) so that what we send is what the API documents. This
module must not know about agents, tasks or HTTP.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import threading
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

_DOCUMENTS = "discovery_cache/documents/"
BATCH = "batch.v1"
LOGGING = "logging.v2"

_INT64 = re.compile(r"-?[0-9]+")
_UINT64 = re.compile(r"[0-9]+")
_DURATION = re.compile(r"-?[0-9]+(\.[0-9]{1,9})?s")
_DATETIME = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})T(?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:\.(?P<frac>[0-9]{1,9}))?(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})"
)
_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


_LOADING = threading.Lock()  # the first report's call and its log line both want Batch's


def document(api: str = BATCH) -> dict[str, Any]:
    """The parsed discovery document of `api` (`BATCH`, `LOGGING`); loaded on first call, then
    shared (do not mutate). Thread-safe: loaded once."""
    with _LOADING:
        return _load(api)


@functools.cache
def _load(api: str) -> dict[str, Any]:
    # The package's folder, found without importing it.
    spec = importlib.util.find_spec("googleapiclient")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("google-api-python-client is not installed")
    path = Path(spec.origin).parent / f"{_DOCUMENTS}{api}.json"
    doc: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return doc


def only_methods(doc: dict[str, Any], methods: Iterable[str]) -> dict[str, Any]:
    """`doc` cut down to the methods named (`"projects.locations.state.report"`) and the
    resources on their paths, each schema they name a bare object: all that a client calling
    only those needs. googleapiclient builds a method for every method of each resource it
    walks, its docstring pretty-printing each schema the method names (5-15 ms of an agent's
    CPU for Batch and Logging); schemas serve it for nothing else we use (docstrings, paging).
    A new dict sharing `doc`'s leaves; `doc` is left as it was. Raises KeyError for a method
    `doc` does not have."""
    cut = {key: value for key, value in doc.items() if key not in ("resources", "schemas")}
    schemas: set[str] = set()
    for method in methods:
        *path, name = method.split(".")
        source, target = doc, cut
        for resource in path:
            source = source["resources"][resource]
            inner = {k: v for k, v in source.items() if k not in ("resources", "methods")}
            target = target.setdefault("resources", {}).setdefault(resource, inner)
        found = source["methods"][name]
        target.setdefault("methods", {})[name] = found
        schemas.update(found[key]["$ref"] for key in ("request", "response") if key in found)
    cut["schemas"] = {name: {"id": name, "type": "object"} for name in sorted(schemas)}
    return cut


def validate(schema: str, value: object, api: str = BATCH) -> list[str]:
    """Check `value` (parsed JSON) against the named schema of `api`'s document; return errors,
    empty when valid.

    Each error starts with the JSON path of the offending value (`agentInfo.tasks[0].runnable`,
    `<root>` for the value itself). Raises KeyError if `schema` is not in the document.
    """
    schemas: dict[str, Any] = document(api)["schemas"]
    if schema not in schemas:
        raise KeyError(f"no schema {schema!r} in the {api} discovery document")
    errors: list[str] = []
    _check(schemas, {"$ref": schema}, value, "", errors)
    return errors


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check(
    schemas: dict[str, Any], node: dict[str, Any], value: object, path: str, errors: list[str]
) -> None:
    if "$ref" in node:
        node = schemas[node["$ref"]]
    where = path or "<root>"
    kind = node.get("type")
    if kind == "any":
        return
    if value is None:
        errors.append(f"{where}: null is not allowed (omit the field instead)")
    elif kind == "object":
        _check_object(schemas, node, value, path, errors)
    elif kind == "array":
        if not isinstance(value, list):
            errors.append(f"{where}: {_show(value)} is not an array")
            return
        for i, item in enumerate(value):
            _check(schemas, node["items"], item, f"{path}[{i}]", errors)
    elif kind == "string":
        _check_string(node, value, where, errors)
    elif kind == "boolean":
        if not isinstance(value, bool):
            errors.append(f"{where}: {_show(value)} is not a boolean")
    elif kind == "integer":
        low, high = _RANGES.get(node.get("format", "int64"), _RANGES["int64"])
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{where}: {_show(value)} is not an integer")
        elif not low <= value <= high:
            errors.append(f"{where}: {value} is out of range for {node.get('format')}")
    elif kind == "number":
        if not isinstance(value, int | float) or isinstance(value, bool):
            errors.append(f"{where}: {_show(value)} is not a number")
    else:
        raise ValueError(f"discovery schema at {where} has unsupported type {kind!r}")


def _check_object(
    schemas: dict[str, Any], node: dict[str, Any], value: object, path: str, errors: list[str]
) -> None:
    if not isinstance(value, dict):
        errors.append(f"{path or '<root>'}: {_show(value)} is not an object")
        return
    properties: dict[str, Any] = node.get("properties", {})
    extra: dict[str, Any] | None = node.get("additionalProperties")
    for key, item in value.items():
        if key in properties:
            _check(schemas, properties[key], item, f"{path}.{key}" if path else key, errors)
        elif extra is not None:
            _check(schemas, extra, item, f"{path}[{json.dumps(key)}]", errors)
        else:
            errors.append(f"{path}.{key}: unknown field" if path else f"{key}: unknown field")


def _check_string(node: dict[str, Any], value: object, where: str, errors: list[str]) -> None:
    if not isinstance(value, str):
        fmt = node.get("format")
        wanted = f"an {fmt} string" if fmt in ("int64", "uint64") else "a string"
        errors.append(f"{where}: {_show(value)} is not {wanted}")
        return
    enum: list[str] | None = node.get("enum")
    if enum is not None and value not in enum:
        errors.append(f"{where}: {_show(value)} is not one of {', '.join(enum)}")
    fmt = node.get("format")
    if fmt in ("int64", "uint64"):
        pattern = _INT64 if fmt == "int64" else _UINT64
        low, high = _RANGES[fmt]
        if not pattern.fullmatch(value) or not low <= int(value) <= high:
            errors.append(f"{where}: {_show(value)} is not an {fmt} string")
    elif fmt == "google-duration":
        if not _DURATION.fullmatch(value):
            errors.append(f'{where}: {_show(value)} is not a duration such as "1.5s"')
    elif fmt == "google-datetime" and not _is_timestamp(value):
        errors.append(f"{where}: {_show(value)} is not an RFC 3339 timestamp")


def _is_timestamp(text: str) -> bool:
    """True for RFC 3339 `2026-11-26T07:06:23.123456Z` / `...+00:00` naming a real instant."""
    match = _DATETIME.fullmatch(text)
    if match is None:
        return False
    zone = "+00:00" if match["zone"] == "Z" else match["zone"]
    try:
        datetime.fromisoformat(f"{match['date']}T{match['time']}{zone}")
    except ValueError:
        return False
    return True
