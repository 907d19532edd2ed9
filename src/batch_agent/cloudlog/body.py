"""The bodies of `entries.write` calls: a `WriteLogEntriesRequest` for a list of encoded
entries, in JSON, cut so that each body stays within Cloud Logging's 10 MB request limit.

What every entry of a call shares (the same logName, resource and labels: one task's, most of
the time) is said once at request level, which the API copies into each entry. The writer
sizes a write by its output bytes, whose JSON form can be up to 6x bigger (`\\u00XX` escapes):
a write too big for one call goes as several, sent one after the other; the offsets move only
once all are written, and a call sent again after a failure is deduplicated by insertId like
any re-send. Pure: no I/O.
"""

from __future__ import annotations

from batch_agent.cloudlog.entries import Group

MAX_BODY = 9 * 1000 * 1000  # bytes of JSON per call: the 10 MB limit, with room to spare


def bodies(groups: list[Group], limit: int = MAX_BODY) -> list[bytes]:
    """The JSON bodies that write the entries of `groups`, in order, each at most `limit`
    bytes (an entry is at most 256 KiB: see `entries`)."""
    if not any(group.entries for group in groups):
        return []
    shared = groups[0].shared
    if all(group.shared == shared for group in groups):
        head = b'{"partialSuccess":true,' + shared + b',"entries":['
        items = [entry for group in groups for entry in group.entries]
    else:  # each entry says its own
        head = b'{"partialSuccess":true,"entries":['
        items = [b"{" + g.shared + b"," + entry[1:] for g in groups for entry in g.entries]
    if len(head) + sum(map(len, items)) + len(items) + 1 <= limit:  # one call: most writes
        return [head + b",".join(items) + b"]}"]
    calls: list[bytes] = []
    start, size = 0, len(head) + 2
    for n, item in enumerate(items):
        if n > start and size + len(item) + 1 > limit:
            calls.append(head + b",".join(items[start:n]) + b"]}")
            start, size = n, len(head) + 2
        size += len(item) + 1
    calls.append(head + b",".join(items[start:]) + b"]}")
    return calls
