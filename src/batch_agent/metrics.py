"""Prometheus metrics and `/healthz` on loopback: the only importer of prometheus_client.

Off by default (`metrics_port` 0): most VMs have nobody to scrape them, and an agent with
metrics off never imports prometheus_client (measured: about 15 ms and 1 MB of RSS on top of
the agent; README "Metrics") nor http.server.
`start_metrics` serves `GET /metrics` and `GET /healthz` on 127.0.0.1 from a daemon thread;
the report loop feeds it through `Metrics`' methods, which only update in-memory values and
never block. `/healthz` is 200 while `healthy()` says so (the last successful report is
recent), else 503. Knows nothing of HTTP to Google or of how tasks run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by `_serve`: with metrics off the agent never loads http.server
    from http.server import ThreadingHTTPServer

    from batch_agent.tasks.record import TaskRecord

REPORT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """What the report loop tells the metrics; this base records nothing (metrics off)."""

    port: int | None = None

    def report_done(self, outcome: str, code: int | None, seconds: float) -> None:
        """A report call ended: `outcome` is "ok" or "error", `code` its HTTP status if any."""

    def tasks_seen(self, records: Iterable[TaskRecord]) -> None:
        """The tasks as stored after a report: states now, runnables started and failed."""

    def shipped(self, stream: str, nbytes: int) -> None:
        """`nbytes` of a runnable's `stream` went to the agent's log."""

    def close(self) -> None:
        """Stop serving; idempotent."""


class Prometheus(Metrics):
    """Thread-safe: prometheus_client's values are."""

    def __init__(self, port: int, healthy: Callable[[], bool]) -> None:
        import prometheus_client as prom  # here: an agent with metrics off never pays for it

        self._prom = prom
        self.registry = registry = prom.CollectorRegistry()
        prom.ProcessCollector(registry=registry)  # process_resident_memory_bytes, cpu seconds
        self._reports = prom.Counter(
            "batch_agent_reports",
            "state.report calls by outcome (ok, error) and HTTP status (none: no answer)",
            ["outcome", "code"],
            registry=registry,
        )
        self._latency = prom.Histogram(
            "batch_agent_report_seconds",
            "state.report call latency, answered or not",
            buckets=REPORT_BUCKETS,
            registry=registry,
        )
        self._tasks = prom.Gauge(
            "batch_agent_tasks", "tasks held by state", ["state"], registry=registry
        )
        self._started = prom.Counter(
            "batch_agent_runnables_started", "runnables started", registry=registry
        )
        self._failed = prom.Counter(
            "batch_agent_runnables_failed", "runnables that exited non-zero", registry=registry
        )
        self._bytes = prom.Counter(
            "batch_agent_output_bytes",
            "runnable output bytes shipped to the agent's log",
            ["stream"],
            registry=registry,
        )
        self._seen_started: set[tuple[str, int]] = set()
        self._seen_failed: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._server = _serve(port, registry, prom, healthy)
        self.port = self._server.server_address[1]

    def report_done(self, outcome: str, code: int | None, seconds: float) -> None:
        self._reports.labels(outcome, str(code) if code is not None else "none").inc()
        self._latency.observe(seconds)

    def tasks_seen(self, records: Iterable[TaskRecord]) -> None:
        states: dict[str, int] = {"ASSIGNED": 0, "RUNNING": 0, "SUCCEEDED": 0, "FAILED": 0}
        started, failed = set(), set()
        for record in records:
            states[record.state.value] = states.get(record.state.value, 0) + 1
            for k, runnable in record.runnables.items():
                if runnable.pid is not None or runnable.container:
                    started.add((record.task_id, k))
                if runnable.exit_code not in (None, 0):
                    failed.add((record.task_id, k))
        for state, count in states.items():
            self._tasks.labels(state).set(count)
        with self._lock:  # count each runnable once; forget the tasks the server deleted
            self._started.inc(len(started - self._seen_started))
            self._failed.inc(len(failed - self._seen_failed))
            self._seen_started, self._seen_failed = started, failed

    def shipped(self, stream: str, nbytes: int) -> None:
        self._bytes.labels(stream).inc(nbytes)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_metrics(port: int, healthy: Callable[[], bool]) -> Metrics:
    """Serve metrics on 127.0.0.1:`port` (`port` -1 picks a free one); 0 means off."""
    if port == 0:
        return Metrics()
    return Prometheus(max(port, 0), healthy)


def _serve(port: int, registry: Any, prom: Any, healthy: Callable[[], bool]) -> ThreadingHTTPServer:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                status, kind, body = 200, prom.CONTENT_TYPE_LATEST, prom.generate_latest(registry)
            elif self.path == "/healthz":
                ok = healthy()
                status, kind = (200 if ok else 503), "text/plain; charset=utf-8"
                body = b"ok\n" if ok else b"no successful report for 3 report intervals\n"
            else:
                status, kind, body = 404, "text/plain; charset=utf-8", b"not found\n"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every few seconds is not news

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
