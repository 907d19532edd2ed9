"""The agent's own log on its way to Cloud Logging (`batch_agent_logs`): a logging handler with a
bounded queue, and one entry per report.

`AgentLog` is a `logging.Handler`: `emit` turns a record into an entry and queues it, never
blocking and never raising, so a slow or unreachable Cloud Logging never slows the agent. The
queue holds at most `capacity` bytes, each entry counted as its text plus `ENTRY_COST` (its
dict: many small records weigh more than their text, and an agent whose tasks never ship fills
it). When it is full, new records are dropped and counted, and the next batch taken starts with
one WARNING entry saying how many were lost (the agent's journal keeps them all). `report`
queues `report agent state: ` and the request in protobuf text form, as Google's
troubleshooting guide shows (`cloudlog.textformat`). The writer `take`s entries for each
request and `put_back`s those of a failed one. Thread-safe. Records are masked like the
agent's other log handlers (the reporter's MaskingFilter is on it too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from batch_agent.cloudlog.entries import format_ns, split_text
from batch_agent.cloudlog.tasklogs import AGENT_LOGS, Site

CAPACITY = 8 * 1024 * 1024  # bytes waiting; beyond, new records are dropped (counted)
ENTRY_COST = 400  # bytes an entry weighs beside its text: the dict, its time and insertId
_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
REPORT_PREFIX = "report agent state: "


class AgentLog(logging.Handler):
    def __init__(self, capacity: int = CAPACITY, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._capacity = capacity
        self._guard = threading.Lock()
        self._queue: deque[dict[str, Any]] = deque()
        self._held = 0  # bytes in the queue, ENTRY_COST each plus its text
        self._dropped = 0
        self._common: dict[str, Any] | None = None  # logName, resource, labels, once known
        self._sequence = 0
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def configure(self, site: Site, instance: str, instance_id: str) -> None:
        """Where the entries go: this VM's project, as a `gce_instance` resource (the agent's
        log is about the VM, not one task), labelled with the instance name."""
        self._common = {
            "logName": f"projects/{site.project_id}/logs/{AGENT_LOGS}",
            "resource": {
                "type": "gce_instance",
                "labels": {
                    "project_id": site.project_id,
                    "zone": site.zone,
                    "instance_id": instance_id,
                },
            },
            "labels": {"hostname": instance},
        }

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.exc_info or record.stack_info:
                text = self.format(record)
            else:  # the formatter's text, without its machinery (~5 us a line)
                text = f"{record.name}: {record.getMessage()}"
        except Exception:  # a bad format string must not take the agent down
            text = str(record.msg)
        severity = _SEVERITY.get(record.levelno, "DEFAULT")
        self._queue_text(text, severity, int(record.created * 1e9))

    def report(self, text: str) -> None:
        """Queue one `report agent state: ...` entry (text: the request in text form)."""
        self._queue_text(REPORT_PREFIX + text, "INFO", time.time_ns())

    def take(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` queued entries, oldest first (a drop notice first when records were
        dropped); none until `configure` was called."""
        if self._common is None:
            return []
        with self._guard:
            taken = [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]
            self._held -= sum(_cost(e["textPayload"]) for e in taken)
            dropped, self._dropped = self._dropped, 0
        if dropped:
            notice = f"batch-agent: {dropped} log records were dropped: Cloud Logging fell behind"
            taken.insert(0, self._entry(notice, "WARNING", time.time_ns()))
        return [{**self._common, **entry} for entry in taken]

    def waiting(self) -> bool:
        """Whether entries wait to be taken (none can be before `configure`)."""
        return self._common is not None and bool(self._queue)

    def put_back(self, entries: list[dict[str, Any]]) -> None:
        """Entries of a write that failed, to be taken again first (as room allows)."""
        with self._guard:
            for entry in reversed(entries):
                size = _cost(entry.get("textPayload", ""))
                if self._held + size > self._capacity:
                    self._dropped += 1
                    continue
                self._held += size
                self._queue.appendleft(entry)

    def _queue_text(self, text: str, severity: str, at_ns: int) -> None:
        pieces = split_text(text)
        size = sum(_cost(piece) for piece in pieces)
        with self._guard:
            if self._held + size > self._capacity:
                self._dropped += 1
                return
            self._held += size
            for piece in pieces:
                self._queue.append(self._entry(piece, severity, at_ns))

    def _entry(self, text: str, severity: str, at_ns: int) -> dict[str, Any]:
        self._sequence += 1
        return {
            "severity": severity,
            "textPayload": text,
            "timestamp": format_ns(at_ns),
            "insertId": f"agent-{at_ns}-{self._sequence}",
        }


def _cost(text: str) -> int:
    return ENTRY_COST + len(text)
