"""A report request in protobuf text form, as Google's agent logs it (`report agent state: ...`).

Google's troubleshooting guide shows the agent's log lines as `metadata:{... instance:"NAME"
...} agent_info:{... tasks:{task_id:"task/..." ...}}`: field names in snake_case, messages in
braces, strings quoted, enums bare, repeated fields repeated. The JSON form's types come from
the Batch discovery document: `google-datetime` and `google-duration` become `{seconds:N
nanos:N}`, int64 strings bare numbers, maps `{key:"K" value:"V"}` entries. Pure.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Any

from batch_agent import discovery

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_ORDER = ("metadata", "agentInfo", "agentTimingInfo")


def report_text(request: dict[str, Any]) -> str:
    """`request` (a ReportAgentStateRequest's JSON form) in compact protobuf text form."""
    ordered = {key: request[key] for key in _ORDER if key in request}
    ordered.update({k: v for k, v in request.items() if k not in ordered})
    return _message(ordered, "ReportAgentStateRequest")


def _message(value: dict[str, Any], schema: str) -> str:
    properties = discovery.document()["schemas"][schema].get("properties", {})
    parts: list[str] = []
    for key, item in value.items():
        node = properties.get(key, {})
        name = _snake(key)
        items = item if isinstance(item, list) else [item]
        node = node.get("items", node) if isinstance(item, list) else node
        parts += [f"{name}:{_value(element, node)}" for element in items]
    return " ".join(parts)


def _value(value: Any, node: dict[str, Any]) -> str:
    if "$ref" in node and isinstance(value, dict):
        return "{" + _message(value, node["$ref"]) + "}"
    if isinstance(value, dict):  # a map
        inner = node.get("additionalProperties", {})
        entries = [f"{{key:{_string(k)} value:{_value(v, inner)}}}" for k, v in value.items()]
        return " ".join(entries) if entries else "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        return _string(str(value))
    fmt = node.get("format")
    if "enum" in node:
        return value
    if fmt in ("int64", "uint64", "int32", "uint32"):
        return value
    if fmt == "google-datetime":
        return _timestamp(value)
    if fmt == "google-duration":
        seconds, _, fraction = value.removesuffix("s").partition(".")
        nanos = int((fraction + "000000000")[:9]) if fraction else 0
        return f"{{seconds:{int(seconds)}" + (f" nanos:{nanos}}}" if nanos else "}")
    return _string(value)


@functools.lru_cache(maxsize=1024)
def _snake(key: str) -> str:
    return _CAMEL.sub("_", key).lower()


@functools.lru_cache(maxsize=4096)  # every report repeats its tasks' event times
def _timestamp(value: str) -> str:
    _head, dot, rest = value.partition(".")
    digits = re.match(r"[0-9]*", rest)
    fraction = digits[0] if dot and digits else ""
    zone = rest[len(fraction) :] if dot else value[19:]
    stamp = datetime.fromisoformat(value[:19] + ("+00:00" if zone in ("Z", "") else zone))
    nanos = int((fraction + "000000000")[:9]) if fraction else 0
    seconds = int(stamp.timestamp())
    return f"{{seconds:{seconds}" + (f" nanos:{nanos}}}" if nanos else "}")


def _string(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'
