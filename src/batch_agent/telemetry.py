"""What the report loop tells the person on the VM: systemd, `batch-agent status`, metrics.

The loop calls one method per step: `ready` after start-up, `reported` after every report
call (answered or not), `watchdog` while it waits, `stopping` and `stopped` on the way out.
Here that becomes sd_notify messages (READY, STATUS, WATCHDOG, STOPPING), facts in the store
(our pid and start; the last report's time, outcome and error), the same facts with the task
records in `status.LIVE_NAME` for `batch-agent status` while we hold the db, and metrics.
Nothing here decides anything about tasks or reports, and a failure here (a full disk for a
fact, a lost datagram) is logged, never raised into the loop. The first facts and status.json
are written once the first report's call is over, not before it: the VM's first report waits
for no disk of ours but the store's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from batch_agent import __version__
from batch_agent.metrics import Metrics
from batch_agent.notify import Notifier
from batch_agent.wire import format_time

# What only the facts and status.json need (`status` and its task modules, procfs) is imported
# when they are first written: after the first report's call (see `reported`).
if TYPE_CHECKING:
    from batch_agent.config import Config
    from batch_agent.control import ControlPlaneError
    from batch_agent.store import TaskStore
    from batch_agent.tasks.output import Lines
    from batch_agent.tasks.record import TaskRecord
    from batch_agent.tasks.taskoutput import Sink
    from batch_agent.tasks.taskset import TaskSet

log = logging.getLogger(__name__)

REPORT_FACT_EVERY = timedelta(seconds=60)  # the last report's durable copy, for a crashed agent
# status.json at most this often: a busy local agent reports every few ms, and each copy is
# a new file (~0.3-0.9 ms of kernel CPU on ext4) and every record's JSON. The last report's is
# always written, at most this late; on a VM reports are seldom closer than this anyway.
PUBLISH_EVERY = timedelta(seconds=1)


class Telemetry:
    def __init__(self, config: Config, store: TaskStore, *, started: datetime) -> None:
        self._config = config
        self._store = store
        self._started = started
        self._notify = Notifier(config.environ)
        self._metrics = Metrics()  # off until `ready` starts the real ones (if asked)
        self._tasks: TaskSet | None = None
        self._last_report: float | None = None  # time.monotonic() of the last report's end
        self._last_outcome = ""
        self._agent_fact: Mapping[str, object] = {}
        self._last_fact: Mapping[str, object] = {}
        self._recording: asyncio.Task[None] | None = None  # the last report's facts being written
        self._fact_written = float("-inf")  # time.monotonic() of the last durable report fact
        self._reports = 0  # report calls ended so far
        self._published = float("-inf")  # time.monotonic() of the last status.json
        self._hurry = asyncio.Event()  # the stop: status.json's wait ends now

    @property
    def watchdog_interval(self) -> timedelta | None:
        """How often the loop must call `watchdog` (half of WatchdogSec); None: no watchdog."""
        return self._notify.watchdog_interval

    def counted(self, write: Sink) -> Sink:
        """`write`, with the bytes it is given counted for the metrics."""

        def counted(tag: str, stream: str, lines: Lines) -> None:
            write(tag, stream, lines)
            self._metrics.shipped(stream, len(lines.data) + 1)

        return counted

    async def ready(self, tasks: TaskSet, *, healthy: Callable[[], bool]) -> None:
        """Start-up is done: the tasks an earlier agent left are taken up again.

        READY now, not at the first answer: an unreachable control plane must not make systemd
        kill us in start-up (TimeoutStartSec) while we drive tasks; STATUS says no report yet.
        Our pid and start (and status.json) are recorded after the first report call ends.
        """
        self._tasks = tasks
        port = self._config.metrics_port
        if port:
            from batch_agent.metrics import start_metrics

            try:
                self._metrics = start_metrics(port, healthy)
                log.info("metrics on http://127.0.0.1:%d/metrics", port)
            except OSError as error:  # a taken port must not keep tasks from running
                log.error("metrics off: cannot listen on 127.0.0.1:%d: %s", port, error)
        self._notify.ready(self.status_line())

    async def reported(
        self, seconds: float, error: ControlPlaneError | None, *, last_success: datetime
    ) -> None:
        """A report call ended after `seconds`, answered (`error` None) or not."""
        self._last_report = time.monotonic()
        self._last_outcome = "ok" if error is None else f"failing ({error})"
        code = error.status if error is not None else 200
        self._metrics.report_done("ok" if error is None else "error", code, seconds)
        self._reports += 1
        if self._tasks is not None:
            self._metrics.tasks_seen(self._tasks.records())
        fact = {
            "time": format_time(datetime.now(UTC)),
            "outcome": "ok" if error is None else "error",
            "error": None if error is None else str(error),
            "status": code,
            "last_success": format_time(last_success),
        }
        self._last_fact = fact
        self.watchdog()
        # Off the report's path (a task assigned by this answer must not wait for our disk);
        # one writer at a time, which writes what the latest report left.
        if self._recording is None or self._recording.done():
            self._recording = asyncio.create_task(self._record_reports())

    async def _record_reports(self) -> None:
        """status.json after the reports, at most every PUBLISH_EVERY, until the latest one is
        in it; the database's copy (an fsync) at most every REPORT_FACT_EVERY, and at the stop.
        The first time, our pid and start go first (`ready` left them for after the call)."""
        from batch_agent.status import REPORT_FACT

        if not self._agent_fact:
            await self._record_agent()
        while True:
            wait = self._published + PUBLISH_EVERY.total_seconds() - time.monotonic()
            if wait > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), wait)
            seen, fact = self._reports, self._last_fact
            if time.monotonic() - self._fact_written >= REPORT_FACT_EVERY.total_seconds():
                self._fact_written = time.monotonic()
                await self._set_fact(REPORT_FACT, fact)
            self._published = time.monotonic()
            await self._publish(self._tasks.records() if self._tasks is not None else [])
            if self._reports == seen:
                return

    def watchdog(self) -> None:
        """The loop is alive: WATCHDOG=1 (if systemd watches us) with a fresh STATUS."""
        self._notify.alive(self.status_line())

    def stopping(self) -> None:
        self._notify.stopping()

    async def stopped(self) -> None:
        """The last step: record the stop for `batch-agent status`, stop serving metrics."""
        from batch_agent.status import LIVE_NAME, REPORT_FACT

        if self._recording is not None:
            self._hurry.set()
            await asyncio.gather(self._recording, return_exceptions=True)
        if self._last_fact:
            await self._set_fact(REPORT_FACT, self._last_fact)
        await self._record_agent(stopped=True)
        with contextlib.suppress(FileNotFoundError):  # from now on `status` reads the db
            (self._config.state_dir / LIVE_NAME).unlink()
        self._metrics.close()

    def status_line(self) -> str:
        """`2 running, 1 succeeded; last report 3s ago: ok`, for `systemctl status`."""
        counts: dict[str, int] = {}
        for record in self._tasks.records() if self._tasks is not None else []:
            state = record.state.value.lower()
            counts[state] = counts.get(state, 0) + 1
        tasks = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no tasks"
        if len(counts) == 1 and sum(counts.values()) > 0:
            tasks = tasks.replace(" ", " task " if sum(counts.values()) == 1 else " tasks ", 1)
        if self._last_report is None:
            return f"{tasks}; no report yet"
        ago = time.monotonic() - self._last_report
        return f"{tasks}; last report {ago:.0f}s ago: {self._last_outcome}"

    async def _record_agent(self, *, stopped: bool = False) -> None:
        """Leave our pid and start for `batch-agent status` (and, on the way out, the stop)."""
        from batch_agent.status import AGENT_FACT
        from batch_agent.tasks.procfs import read_stat

        found = read_stat(os.getpid())
        fact = {
            "pid": os.getpid(),
            "start_ticks": found.start_time if found is not None else None,
            "started": format_time(self._started),
            "version": __version__,
            "stopped": format_time(datetime.now(UTC)) if stopped else None,
        }
        await self._set_fact(AGENT_FACT, fact)
        self._agent_fact = fact

    async def _set_fact(self, key: str, value: Mapping[str, object]) -> None:
        try:
            await self._store.set_fact(key, json.dumps(value))
        except (sqlite3.Error, OSError) as error:  # the store's trouble is the loop's to see
            log.warning("fact %s not recorded: %s", key, error)

    async def _publish(self, records: list[TaskRecord]) -> None:
        """Write `LIVE_NAME` for `batch-agent status` (it cannot read the db we hold): the
        facts and the records without their specs (which hold secrets). Replaced whole, so a
        reader never sees half of it; not fsync'd: the db is the durable copy."""
        from batch_agent.status import LIVE_NAME

        text = json.dumps(
            {
                "agent": self._agent_fact,
                "last_report": self._last_fact,
                "tasks": [json.loads(r.to_json()) for r in records],  # here: they change here
            }
        )
        path = self._config.state_dir / LIVE_NAME

        def write() -> None:
            partial = path.with_name(f".{path.name}.tmp")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.replace(partial, path)

        try:
            await asyncio.to_thread(write)
        except OSError as error:
            log.warning("%s not written: %s", path, error)
