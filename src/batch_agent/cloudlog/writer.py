"""`CloudLogWriter`: the agent's one writer to Cloud Logging, for every task and the agent's log.

One asyncio task, whatever the number of tasks. Each round it looks at the followed tasks'
output files (a stat each), picks what is new from each stream's Cloud Logging offset (its
own, apart from the agent log's) up to one request's worth (`REQUEST_BYTES` of output,
`MAX_ENTRIES` entries), reads, masks and encodes it in the writer's thread (`body`: one call,
or several in order when its JSON would pass the request limit; the agent's own entries in a
call of their own), saves the chosen segments in the task records (`pending`), sends the
`entries.write` calls (partialSuccess), and on success
moves the offsets past them and saves again. A segment sent again (the answer was lost, the
agent was killed) carries the same insertIds and timestamps (see `entries`), so Cloud Logging
keeps each line once. Healthy, a line is written within about `FLUSH_EVERY` plus one call;
while there is more than a request's worth, rounds follow each other at once.

Failures: a retryable one backs off (capped, jittered, at least Retry-After); the backlog
stays in the files, never in memory. 403 (the API disabled, no `logging.logEntries.create`)
adds one warning event to each task whose lines it refused (once per task) and is retried
like the rest: it never fails a task. 400 (entries the API refuses for good) is logged and
those lines are skipped, the valid entries of the request being written (partialSuccess).
A task being deleted waits in `drain` (at most DRAIN_TIMEOUT) for its last lines.
A task whose spec reads secrets is shipped only once this agent knows its values
(`Masker.knows`): output is masked before it leaves, like the agent log's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

from batch_agent.cloudlog.agentlog import AgentLog
from batch_agent.cloudlog.batch import (
    MAX_ENTRIES,
    Pick,
    Write,
    build,
    pick,
    streams,
)
from batch_agent.cloudlog.body import bodies
from batch_agent.cloudlog.entries import Destination
from batch_agent.cloudlog.tasklogs import Site, TaskLog
from batch_agent.control import Backoff, ControlPlaneError
from batch_agent.store import StorageError
from batch_agent.tasks import events
from batch_agent.tasks.masking import Masker
from batch_agent.tasks.record import TaskRecord

log = logging.getLogger(__name__)

T = TypeVar("T")
FLUSH_EVERY = 0.5  # seconds between rounds when there was nothing more to send
DRAIN_TIMEOUT = timedelta(seconds=10)  # how long a task's DELETED waits for its last lines


class LogClient(Protocol):
    def write(self, body: bytes) -> None: ...  # blocks; raises ControlPlaneError

    def abort(self) -> None: ...


class CloudLogWriter:
    def __init__(
        self,
        client: LogClient,
        *,
        site: Site,
        workdir: Path,
        mode: str,
        masker: Masker,
        save: Callable[[Sequence[TaskRecord]], Awaitable[None]],
        on_change: Callable[[], None],
        agent_log: AgentLog | None = None,
        every: float = FLUSH_EVERY,
    ) -> None:
        self._client = client
        self._site = site
        self._workdir = workdir
        self._mode = mode
        self._masker = masker
        self._save_many = save
        self._on_change = on_change
        self._agent_log = agent_log
        self._every = every
        self._records: Callable[[], list[TaskRecord]] = list
        self._logs: dict[str, TaskLog] = {}
        self._draining: dict[str, asyncio.Event] = {}
        # Records drained for a deletion: never shipped nor saved again (by identity: the
        # server may assign the same name again, to a new record).
        self._forgotten: dict[int, TaskRecord] = {}
        self._batch_resource = False
        self._backoff = Backoff()
        self._delay = timedelta(seconds=1)  # before the next try, after a failed write
        self._unsaved: dict[TaskLog, None] = {}  # written, offsets not saved yet (in order)
        self._denied = False  # the last write was refused with 403 (logged once per streak)
        self._turn = itertools.count()
        self._kick: asyncio.Event | None = None
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloudlog")
        # The agent's log is shipped once a task of this agent ships its output (auto) or
        # always: on a VM whose jobs do not log to Cloud Logging, it is not either.
        self._agent_log_on = False

    def follow(self, records: Callable[[], list[TaskRecord]]) -> None:
        """Ship the output of the tasks `records()` gives (called each round, on the loop),
        deleted ones too until they are drained."""
        self._records = records

    def use_batch_resource(self, flag: bool | None) -> None:
        """The report response's `useBatchMonitoredResource` (None: not said, no change)."""
        if flag is not None:
            self._batch_resource = flag

    def wake(self) -> None:
        """Start the next round now (a task ended, a line is waiting)."""
        if self._kick is not None:
            self._kick.set()

    async def run(self) -> None:
        """Write rounds until cancelled."""
        self._kick = asyncio.Event()
        try:
            while True:
                try:
                    outcome = await self._round()
                except Exception:  # a bug here must not end the shipping of every task
                    log.exception("cloud logging: a write round failed")
                    outcome, self._delay = "failed", self._backoff.next_delay()
                if outcome == "more":
                    continue
                if outcome == "failed":
                    await asyncio.sleep(self._delay.total_seconds())
                    continue
                self._kick.clear()
                # asyncio.timeout, not wait_for, whose 3.11 version can swallow the cancel
                # that ends this loop if a kick comes at the same moment (deadlines.py).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._every):
                        await self._kick.wait()
        finally:
            self._client.abort()
            self._threads.shutdown(wait=False)

    async def drain(self, record: TaskRecord, timeout: timedelta = DRAIN_TIMEOUT) -> None:
        """Wait until `record`'s output is all in Cloud Logging (at most `timeout`); then the
        task is forgotten here: its record is never saved by the writer again."""
        task_log = self._task_log(record)
        name = record.task_id
        if task_log.enabled and not self._caught_up(task_log):
            done = self._draining[name] = asyncio.Event()
            self.wake()
            try:
                await asyncio.wait_for(done.wait(), timeout.total_seconds())
            except TimeoutError:
                log.warning(
                    "task %s: deleted before all of its output reached Cloud Logging"
                    " (waited %.0fs)",
                    name,
                    timeout.total_seconds(),
                )
            finally:
                self._draining.pop(name, None)
        self._forgotten[id(record)] = record
        self._logs.pop(name, None)

    async def flush(self, timeout: timedelta) -> bool:
        """Wait (at most `timeout`) until the output of every ended task is written; True if
        it was. For the agent's exit: running tasks outlive the agent, and what is left of any
        task is sent by the next agent, from the offsets."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout.total_seconds()
        while not all(self._caught_up(t) for t in self._followed() if t.record.state.is_terminal):
            if loop.time() >= end:
                return False
            self.wake()
            await asyncio.sleep(0.05)
        return True

    # -- one round ---------------------------------------------------------------------------

    async def _round(self) -> str:
        """One write: "idle" (nothing more now), "more" (send again at once) or "failed"."""
        followed = self._followed()
        destinations = {t: t.destination(self._site, self._batch_resource) for t in followed}
        self._agent_log_on |= self._mode == "always" or any(t.enabled for t in self._logs.values())
        agent_log = self._agent_log if self._agent_log_on else None
        agent_entries = agent_log.take(MAX_ENTRIES // 2) if agent_log is not None else []
        picks, full = pick(followed, self._workdir)
        if not picks and not agent_entries:
            await self._save_unsaved()
            self._wake_drained(followed)
            return "idle"
        masker = self._masker if self._masker else None
        now_ns = time.time_ns()
        write = await self._in_thread(
            functools.partial(_prepare, picks, self._workdir, destinations, masker, now_ns)
        )
        write.full |= full
        if agent_entries:  # a call of their own: the rest was encoded in a worker thread
            write.bodies += bodies(agent_entries)
        if not write.bodies:
            await self._save_unsaved()
            self._wake_drained(followed)
            return "more" if write.segments else "idle"
        touched = list(write.segments)
        for task_log, segments in write.segments.items():
            task_log.set_pending(segments)
        # Before sending: a resend after a crash is the same. With it go the offsets moved by
        # the last write, if that one was not saved on its own (see below).
        await self._save([*touched, *(t for t in self._unsaved if t not in write.segments)])
        self._unsaved.clear()
        try:
            await self._in_thread(functools.partial(self._send, write.bodies))
        except ControlPlaneError as error:
            if error.status == 400:
                log.error("cloud logging refused entries for good (skipped): %s", error)
            else:
                if self._agent_log is not None:
                    self._agent_log.put_back(agent_entries)
                await self._failed(error, touched)
                return "failed"
        if self._denied:
            log.info("cloud logging: writing again")
        self._denied = False
        self._backoff.reset()
        for task_log, segments in write.segments.items():
            task_log.written(segments)
        if write.full:
            # More at once: the next round's save carries these offsets. A crash before it
            # sends the pending segments on disk again, which Cloud Logging deduplicates.
            self._unsaved.update(dict.fromkeys(touched))
        else:
            await self._save(touched)
        self._wake_drained(followed)
        return "more" if write.full else "idle"

    def _in_thread(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Run `call` in the writer's own thread (reading, building, sending): its memory
        stays in one malloc arena, not spread over those of the loop's whole pool."""
        return asyncio.get_running_loop().run_in_executor(self._threads, call)

    def _send(self, calls: list[bytes]) -> None:
        """Make these `entries.write` calls, in order: in a worker thread. A 400 refuses one
        call's entries for good: the others are still sent."""
        refused: ControlPlaneError | None = None
        for body in calls:
            try:
                self._client.write(body)
            except ControlPlaneError as error:
                if error.status != 400:
                    raise
                refused = error
        if refused is not None:
            raise refused

    def _followed(self) -> list[TaskLog]:
        """The tasks to ship now, in a rotating order (no task starves the others)."""
        current = self._records()
        alive = {id(r) for r in current}
        self._forgotten = {key: r for key, r in self._forgotten.items() if key in alive}
        records = {r.task_id: r for r in current if id(r) not in self._forgotten}
        for name in list(self._logs):
            if name not in records:
                del self._logs[name]
        logs = [self._task_log(r) for r in records.values()]
        ready = [t for t in logs if t.enabled and self._may_read(t)]
        if not ready:
            return []
        turn = next(self._turn) % len(ready)
        return ready[turn:] + ready[:turn]

    async def _failed(self, error: ControlPlaneError, touched: list[TaskLog]) -> None:
        self._delay = max(self._backoff.next_delay(), error.retry_after or timedelta(0))
        if error.status != 403:
            log.warning(
                "cloud logging write failed (%s); retrying in %.1fs",
                error,
                self._delay.total_seconds(),
            )
            return
        if not self._denied:
            log.warning("cloud logging denied the agent's writes: %s", error)
        self._denied = True
        warned = [t for t in touched if not t.state.get("denied")]
        at = datetime.now(UTC)
        for task_log in warned:
            task_log.state["denied"] = True
            task_log.record.add_event(events.cloud_logging_denied(str(error)), at=at)
        if warned:
            await self._save(warned)
            self._on_change()

    async def _save_unsaved(self) -> None:
        if self._unsaved:
            unsaved, self._unsaved = list(self._unsaved), {}
            await self._save(unsaved)

    async def _save(self, task_logs: list[TaskLog]) -> None:
        """Save the records of these tasks that are still the agent's (a deleted task's record
        must not come back)."""
        alive = {id(r) for r in self._records()}
        records = [
            t.record
            for t in task_logs
            if id(t.record) in alive and id(t.record) not in self._forgotten
        ]
        if not records:
            return
        try:
            await self._save_many(records)
        except StorageError as error:
            log.warning("cloud logging offsets not saved yet: %s", error)

    # -- helpers -----------------------------------------------------------------------------

    def _task_log(self, record: TaskRecord) -> TaskLog:
        task_log = self._logs.get(record.task_id)
        if task_log is None or task_log.record is not record:
            task_log = self._logs[record.task_id] = TaskLog(record, self._mode)
        return task_log

    def _may_read(self, task_log: TaskLog) -> bool:
        return not task_log.needs_secrets or self._masker.knows(task_log.record.task_id)

    def _caught_up(self, task_log: TaskLog) -> bool:
        """Whether every byte of the task's output is in Cloud Logging (or cannot be read)."""
        if task_log.pending():
            return False
        if not self._may_read(task_log):
            return True  # its values are unknown to this agent: nothing of it may be sent
        return all(size <= start for _, _, start, size, _ in streams(task_log, self._workdir))

    def _wake_drained(self, followed: list[TaskLog]) -> None:
        for name, done in self._draining.items():
            task_log = self._logs.get(name)
            if task_log is None or self._caught_up(task_log):
                done.set()


def _prepare(
    picks: list[Pick],
    workdir: Path,
    destinations: dict[TaskLog, Destination],
    masker: Masker | None,
    now_ns: int,
) -> Write:
    """`build`, and the calls that write its entries (their JSON), in the same worker thread:
    the entries themselves are not kept."""
    write = build(picks, workdir, destinations, masker, now_ns)
    if write.entries:
        write.bodies, write.entries = bodies(write.entries), []
    return write
