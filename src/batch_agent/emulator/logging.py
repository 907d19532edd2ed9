"""Cloud Logging's `entries:write` as the emulator plays it, and the entries it stored.

`LogStore.write` checks a request as Google documents it: a bearer token, a JSON body within the
10 MB request limit, a valid `WriteLogEntriesRequest` by the real Logging v2 discovery document,
then each entry after the request's `logName`/`resource`/`labels` defaults are applied: a
log name, a monitored resource, one payload, at most 64 labels, at most 256 KiB (measured as
the entry's UTF-8 JSON, stricter than Google's approximate internal size), a timestamp at most
a day ahead, and at most 1000 distinct projects per request. A bad entry fails the whole
request unless `partialSuccess`, which writes the good ones and names the bad ones by index in
`WriteLogEntriesPartialErrors`, as the API does. Missing `timestamp`/`insertId` are supplied.

`entries` reads the store as a Cloud Logging query would: duplicates (same project, timestamp
and insertId: the API's documented rule) removed, in write order; `entries_since` reads the same
from a cursor on, for a watcher that follows them as they arrive (`batch-agent local`);
`received` counts every entry written, duplicates too, so tests see re-sends. Tests script
faults with `fail_next` and `deny` (403 with the body Google sends when the API is disabled or
the caller lacks `logging.logEntries.create`). Thread-safe. Plain values only: must not import
agent code or parse HTTP.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import re
import threading
import time
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote

from batch_agent import discovery
from batch_agent.emulator.backend import Reply, google_error

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # "Size of an entries.write request: 10 MB"
MAX_ENTRY_BYTES = 256 * 1024  # "Size of a LogEntry: 256 KB"
MAX_LABELS = 64  # "Number of labels: 64 per LogEntry"
MAX_PROJECTS = 1000  # entries.write: "log entries for a maximum of 1000 different resource names"
_FUTURE_NS = 24 * 3600 * 10**9  # "rejects entries with timestamps more than 1 day in the future"
_LOG_NAME = re.compile(r"/?((?:projects|organizations|billingAccounts|folders)/[^/]+)/logs/(.+)")
_LOG_ID = re.compile(r"[A-Za-z0-9/_.\-]{1,511}")
_PAYLOADS = ("textPayload", "jsonPayload", "protoPayload")
_PARTIAL = "type.googleapis.com/google.logging.v2.WriteLogEntriesPartialErrors"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_INVALID_ARGUMENT = 3  # google.rpc.Code
_INSERT_ID = re.compile(rb'"insertId"\s*:')  # count_only
_LOG_ID_IN_BODY = re.compile(rb'"logName"\s*:\s*"[^"]*/logs/([^"]*)"')  # count_only


class LogStore:
    """Entries written to the emulated Cloud Logging, for the project `project_number`."""

    def __init__(self, project_number: str = "123456789012") -> None:
        self._project_number = project_number
        self._lock = threading.Lock()
        self._written: list[dict[str, Any]] = []  # every entry stored, defaults applied
        self._unique: list[dict[str, Any]] = []  # the same without duplicates
        self._keys: set[tuple[str, int, str]] = set()  # the dedup keys of `_unique`
        self._failures: list[int | None] = []  # statuses to answer the next calls with
        self._denied: Literal["permission", "disabled"] | None = None
        self._ids = itertools.count(1)
        self._last_supplied_ns = 0
        self.requests = 0  # entries:write calls answered, refused ones too
        # Benchmarks: accept any request and only count its entries (no parsing, no schema
        # check, no storage), so that the emulator in the same process measures the agent,
        # not itself.
        self.count_only = False
        self._counted: dict[str, int] = {}

    # -- steering (tests) --------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503, *, after: int = 0) -> None:
        """Answer `n` calls with HTTP `status`, storing nothing: the next ones, or those that
        follow the next `after` (served as usual)."""
        with self._lock:
            self._failures.extend([None] * after + [status] * n)

    def clear_faults(self) -> None:
        """Forget the failures `fail_next` scripted that have not been answered yet."""
        with self._lock:
            self._failures.clear()

    def deny(self, reason: Literal["permission", "disabled"] | None = "permission") -> None:
        """From now on answer 403 PERMISSION_DENIED as Google does when the writer lacks
        `logging.logEntries.create` ("permission") or the Logging API is off ("disabled");
        None serves again."""
        with self._lock:
            self._denied = reason

    # -- inspection --------------------------------------------------------------------------

    def entries(self, log_id: str | None = None) -> list[dict[str, Any]]:
        """Stored entries (of log `log_id`, e.g. "batch_task_logs", when given) as a query
        returns them: duplicates by (project, timestamp, insertId) removed, in write order."""
        seen: set[tuple[str, int, str]] = set()
        out: list[dict[str, Any]] = []
        with self._lock:
            written = list(self._written)
        for entry in written:
            project, entry_log = _split_log_name(entry["logName"])
            if log_id is not None and entry_log != log_id:
                continue
            key = (project, _instant_ns(entry["timestamp"]), entry["insertId"])
            if key not in seen:
                seen.add(key)
                out.append(copy.deepcopy(entry))
        return out

    def entries_since(
        self, cursor: int, log_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """The entries stored after the first `cursor` ones `entries()` would list (of log
        `log_id` when given; the cursor counts every log's), and the next cursor. For a
        watcher of many entries: shallow copies, whose nested values (labels, resource,
        jsonPayload) are the store's and must not be changed."""
        with self._lock:
            fresh, end = self._unique[cursor:], len(self._unique)
        out = [
            dict(entry)
            for entry in fresh
            if log_id is None or _split_log_name(entry["logName"])[1] == log_id
        ]
        return out, end

    def received(self, log_id: str | None = None) -> int:
        """How many entries were written (of log `log_id` when given), duplicates included."""
        with self._lock:
            logs = [_split_log_name(e["logName"])[1] for e in self._written]
            counted = sum(n for i, n in self._counted.items() if log_id in (None, i))
        return counted + sum(1 for entry_log in logs if log_id is None or entry_log == log_id)

    # -- the API -----------------------------------------------------------------------------

    def write(self, body: bytes, authorization: str | None) -> Reply:
        """`POST v2/entries:write`: store the request's entries or say why not."""
        with self._lock:
            self.requests += 1
            status = self._failures.pop(0) if self._failures else None
            denied = self._denied
        if status is not None:
            return google_error(status, "injected failure")
        if not authorization or not authorization.startswith("Bearer ") or len(authorization) < 8:
            return google_error(401, "Request is missing required authentication credential.")
        if denied is not None:
            return self._denial(denied)
        if len(body) > MAX_REQUEST_BYTES:
            return google_error(
                400, f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."
            )
        if self.count_only:
            return self._count(body)
        try:
            request = json.loads(body)
        except (ValueError, RecursionError) as e:
            return google_error(400, f"Invalid JSON payload received. {e}")
        if errors := discovery.validate("WriteLogEntriesRequest", request, discovery.LOGGING):
            return google_error(400, "Invalid WriteLogEntriesRequest: " + "; ".join(errors[:5]))
        return self._store(request)

    def _store(self, request: dict[str, Any]) -> Reply:
        entries: list[dict[str, Any]] = request.get("entries", [])
        if not entries:
            return google_error(400, "entries: at least one log entry is required")
        filled = [_with_defaults(entry, request) for entry in entries]
        now_ns = time.time_ns()
        problems = {i: p for i, entry in enumerate(filled) if (p := _problem(entry, now_ns))}
        projects = {
            _split_log_name(e["logName"])[0] for i, e in enumerate(filled) if i not in problems
        }
        if len(projects) > MAX_PROJECTS:
            return google_error(
                400,
                f"A request may write to at most {MAX_PROJECTS} resource names; got"
                f" {len(projects)}",
            )
        if problems and not request.get("partialSuccess"):
            first = min(problems)
            return google_error(400, f"entries[{first}]: {problems[first]}")
        if not request.get("dryRun"):
            with self._lock:
                for i, entry in enumerate(filled):
                    if i not in problems:
                        self._keep(self._supply_ids(entry))
        if problems:
            errors = {
                str(i): {"code": _INVALID_ARGUMENT, "message": p} for i, p in problems.items()
            }
            first = min(problems)
            return google_error(
                400,
                f"Log entries with invalid fields were not written; entries[{first}]:"
                f" {problems[first]}",
                [{"@type": _PARTIAL, "logEntryErrors": errors}],
            )
        return Reply(200, b"{}")

    def _keep(self, entry: dict[str, Any]) -> None:
        """Store one valid entry; a duplicate is counted but not listed again. Under the lock."""
        self._written.append(entry)
        key = (_split_log_name(entry["logName"])[0], _instant_ns(entry["timestamp"]))
        unique = (*key, str(entry["insertId"]))
        if unique not in self._keys:
            self._keys.add(unique)
            self._unique.append(entry)

    def _count(self, body: bytes) -> Reply:
        """Count a request's entries per log without parsing it (parsing 10 MB of JSON costs
        this process more than the agent's shipping of it): an entry has one `"insertId":`,
        and a log name is either said once for all entries or in each. Exact for JSON, where a
        quote inside a string is always escaped; for benchmarks, whose agent sets insertIds."""
        entries = len(_INSERT_ID.findall(body))
        names = [unquote(m.decode()) for m in _LOG_ID_IN_BODY.findall(body)]
        counts = {names[0]: entries} if len(names) == 1 else dict.fromkeys(names, 0)
        if len(names) != 1:
            for name in names:
                counts[name] += 1
        with self._lock:
            for log_id, n in counts.items():
                self._counted[log_id] = self._counted.get(log_id, 0) + n
        return Reply(200, b"{}")

    def _supply_ids(self, entry: dict[str, Any]) -> dict[str, Any]:
        """`entry` with the timestamp and insertId the API supplies when missing (an earlier
        entry sorts first). Called under the lock."""
        if "timestamp" not in entry:
            now = max(time.time_ns(), self._last_supplied_ns + 1000)
            self._last_supplied_ns = now
            seconds, micros = divmod(now // 1000, 10**6)
            entry["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            entry["timestamp"] += f".{micros:06d}Z"
        if "insertId" not in entry:
            entry["insertId"] = f"emulator-{next(self._ids):012d}"
        return entry

    def _denial(self, reason: str) -> Reply:
        number = self._project_number
        if reason == "disabled":
            message = (
                f"Cloud Logging API has not been used in project {number} before or it is"
                " disabled. Enable it by visiting https://console.developers.google.com/apis/api/"
                f"logging.googleapis.com/overview?project={number} then retry. If you enabled"
                " this API recently, wait a few minutes for the action to propagate to our"
                " systems and retry."
            )
            info = {
                "reason": "SERVICE_DISABLED",
                "domain": "googleapis.com",
                "metadata": {"service": "logging.googleapis.com", "consumer": f"projects/{number}"},
            }
        else:
            message = (
                "Permission 'logging.logEntries.create' denied on resource (or it may not exist)."
            )
            info = {
                "reason": "IAM_PERMISSION_DENIED",
                "domain": "iam.googleapis.com",
                "metadata": {"permission": "logging.logEntries.create"},
            }
        return google_error(403, message, [{"@type": _ERROR_INFO, **info}])


def _with_defaults(entry: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """A copy of `entry` with the request's logName, resource and labels where it has none
    (an entry's own label wins over the request's). Shallow: the request was parsed for this
    call alone, a stored entry's values are never changed, and reads hand out deep copies."""
    filled = dict(entry)
    for field in ("logName", "resource"):
        if field not in filled and field in request:
            filled[field] = request[field]
    if "labels" in request:
        filled["labels"] = {**request["labels"], **filled.get("labels", {})}
    if "logName" in filled:
        filled["logName"] = filled["logName"].removeprefix("/")
    return filled


def _problem(entry: dict[str, Any], now_ns: int) -> str | None:
    """Why Cloud Logging would refuse this (defaults applied) entry; None when it would not."""
    name = entry.get("logName")
    if not name:
        return "logName is required (in the entry or the request)"
    if problem := _log_name_problem(name):
        return problem
    if not entry.get("resource", {}).get("type"):
        return "resource.type is required (in the entry or the request)"
    if len([p for p in _PAYLOADS if p in entry]) > 1:
        return "a log entry has at most one of textPayload, jsonPayload, protoPayload"
    if len(entry.get("labels", {})) > MAX_LABELS:
        return f"{len(entry['labels'])} labels; a log entry has at most {MAX_LABELS}"
    if "timestamp" in entry and _instant_ns(entry["timestamp"]) > now_ns + _FUTURE_NS:
        return f"timestamp {entry['timestamp']} is more than 1 day in the future"
    size = len(json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_ENTRY_BYTES:
        return f"Log entry with size {size / 1024:.1f}K exceeds maximum size of 256.0K"
    return None


# A request's entries share a few log names and instants a second apart: each is read once.
@functools.lru_cache(maxsize=256)
def _log_name_problem(name: str) -> str | None:
    """Why `name` is no log name Cloud Logging takes; None when it is one."""
    match = _LOG_NAME.fullmatch(name)
    if match is None:
        return f"logName {name!r} is not projects/PROJECT_ID/logs/LOG_ID"
    if not _LOG_ID.fullmatch(unquote(match[2])):
        return f"logName {name!r}: LOG_ID must be under 512 characters of [A-Za-z0-9/_.-]"
    return None


@functools.lru_cache(maxsize=256)
def _split_log_name(name: str) -> tuple[str, str]:
    """(parent, LOG_ID decoded) of a stored (valid) log name."""
    match = _LOG_NAME.fullmatch(name)
    assert match is not None  # stored entries passed _problem
    return match[1], unquote(match[2])


def _instant_ns(stamp: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (validated by the schema), so that
    `...:00Z` and `...:00.000000000+00:00` are one instant for the dedup rule."""
    head, dot, rest = stamp.partition(".")
    if dot:
        digits = re.match(r"[0-9]*", rest)
        frac = digits[0] if digits else ""
        zone = rest[len(frac) :]
    else:
        head, frac, zone = stamp[:19], "", stamp[19:]
    return _epoch_seconds(head, zone) * 10**9 + int((frac + "000000000")[:9])


@functools.lru_cache(maxsize=1024)
def _epoch_seconds(head: str, zone: str) -> int:
    zone = "+00:00" if zone in ("Z", "z") else zone
    return int(datetime.fromisoformat(head + zone).timestamp())
