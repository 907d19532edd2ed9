"""The bodies of `entries.write` calls: a `WriteLogEntriesRequest` for a list of entries, in
JSON, cut so that each body stays within Cloud Logging's 10 MB request limit.

The writer sizes a write by its output bytes, whose JSON form can be up to 6x bigger (`\\u00XX`
escapes): a write too big for one call goes as several, sent one after the other; the offsets
move only once all are written, and a call sent again after a failure is deduplicated by
insertId like any re-send. Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Any

MAX_BODY = 9 * 1000 * 1000  # bytes of JSON per call: the 10 MB limit, with room to spare


def request(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The WriteLogEntriesRequest for `entries`, what they all share (the same logName,
    resource or labels: one task's, most of the time) said once at request level, which the
    API copies into each entry. Takes the fields out of `entries` (made for this request)."""
    shared: dict[str, Any] = {"partialSuccess": True}
    first = entries[0]
    for key in ("logName", "resource", "labels"):
        value = first.get(key)
        if value is not None and all(e.get(key) is value for e in entries):
            shared[key] = value
            for entry in entries:
                del entry[key]
    return {**shared, "entries": entries}


def bodies(entries: list[dict[str, Any]], limit: int = MAX_BODY) -> list[bytes]:
    """The JSON bodies that write `entries` (made for this call: see `request`), in order,
    each at most `limit` bytes (an entry is at most 256 KiB: see `entries`)."""
    return _within(request(entries), limit)


def _within(request: dict[str, Any], limit: int) -> list[bytes]:
    body = json.dumps(request, separators=(",", ":")).encode()
    entries = request["entries"]
    if len(body) <= limit or len(entries) < 2:
        return [body]
    half = len(entries) // 2  # the shared fields hold for each half as for the whole
    return _within({**request, "entries": entries[:half]}, limit) + _within(
        {**request, "entries": entries[half:]}, limit
    )
