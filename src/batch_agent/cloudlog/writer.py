"""`CloudLogWriter`: the agent's one writer to Cloud Logging, for every task and the agent's log.

One asyncio task, whatever the number of tasks. Each round it picks what to send: it looks
at the followed tasks' output files (a stat each, the tasks in a rotating order so that none
starves the others), takes what is new from each stream's Cloud Logging offset (its own,
apart from the agent log's) up to one request's worth (`REQUEST_BYTES` of output,
`MAX_ENTRIES` entries), and reads, masks and encodes it in the writer's thread (`body`: one
call, or several in order when its JSON would pass the request limit; the agent's own entries
in a call of their own). The `Sender` (`sender`) then sends that write, in a thread of its
own, and commits its offsets, or backs off. Healthy, a line is written within about
`FLUSH_EVERY` plus one call; while there is more than a request's worth, rounds follow each
other at once, each write sent while the next is read and built (from where the one in flight
ends): its calls wait for that answer, so one write is in flight and calls keep their order,
and when it fails, the one built meanwhile is dropped (its lines are read again later). Two
writes in memory at once is what `batch.WRITE_JSON` bounds.

A task being deleted waits in `drain` (at most DRAIN_TIMEOUT) for its last lines; then the
writer forgets it. A task whose spec reads secrets is shipped only once this agent knows its
values (`Masker.knows`): output is masked before it leaves, like the agent log's.
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
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from batch_agent.cloudlog.agentlog import AgentLog
from batch_agent.cloudlog.batch import (
    MAX_ENTRIES,
    Write,
    build,
    pick,
    streams,
)
from batch_agent.cloudlog.body import bodies
from batch_agent.cloudlog.entries import encode
from batch_agent.cloudlog.sender import LogClient, Sender
from batch_agent.cloudlog.tasklogs import Site, TaskLog
from batch_agent.tasks.masking import Masker
from batch_agent.tasks.record import TaskRecord

log = logging.getLogger(__name__)

T = TypeVar("T")
FLUSH_EVERY = 0.5  # seconds between rounds when there was nothing more to send
DRAIN_TIMEOUT = timedelta(seconds=10)  # how long a task's DELETED waits for its last lines


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
        self._agent_log = agent_log
        self._every = every
        self._records: Callable[[], list[TaskRecord]] = list
        self._logs: dict[str, TaskLog] = {}
        self._draining: dict[str, asyncio.Event] = {}
        # Records drained for a deletion: never shipped nor saved again (by identity: the
        # server may assign the same name again, to a new record).
        self._forgotten: dict[int, TaskRecord] = {}
        self._batch_resource = False
        self._turn = itertools.count()
        self._kick: asyncio.Event | None = None
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloudlog")
        # The calls in a thread of their own: the next write is read and built meanwhile.
        self._send_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloudlog-send")
        # The write in flight: its answer, the write (the next pick starts after its segments),
        # its agent-log entries (put back if it fails).
        self._in_flight: tuple[asyncio.Future[bool], Write, list[dict[str, Any]]] | None = None
        self._sender = Sender(
            client,
            in_thread=self._in_send_thread,
            save=save,
            still_ours=self._still_ours,
            on_change=on_change,
        )
        # The agent's log is shipped once a task of this agent ships its output (auto; see
        # _task_log) or always: on a VM whose jobs do not log to Cloud Logging, it is not either.
        self._agent_log_on = mode == "always"

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
                    outcome = "failed"
                    self._sender.back_off()
                if outcome == "more":
                    continue
                if outcome == "failed":
                    await asyncio.sleep(self._sender.delay.total_seconds())
                    continue
                self._kick.clear()
                # asyncio.timeout, not wait_for, whose 3.11 version can swallow the cancel
                # that ends this loop if a kick comes at the same moment (deadlines.py).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._every):
                        await self._kick.wait()
        finally:
            if self._in_flight is not None:
                self._in_flight[0].cancel()
            self._client.abort()
            self._threads.shutdown(wait=False)
            self._send_thread.shutdown(wait=False)

    async def drain(self, record: TaskRecord, timeout: timedelta = DRAIN_TIMEOUT) -> None:
        """Wait until `record`'s output is all in Cloud Logging (at most `timeout`); then the
        task is forgotten here: its record is never saved by the writer again."""
        task_log = self._task_log(record)
        name = record.task_id
        if not self._caught_up(task_log) and task_log.enabled:  # sizes first: no parse
            done = self._draining[name] = asyncio.Event()
            self.wake()
            try:
                async with asyncio.timeout(timeout.total_seconds()):  # as the idle wait above
                    await done.wait()
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
        """Wait (at most `timeout`) until the output of every ended task is written, and the
        agent's log queued so far when it is shipped; True if they were. For the agent's exit:
        running tasks outlive the agent, and what is left of any task is sent by the next
        agent, from the offsets."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout.total_seconds()
        while True:
            ended = [t for t in self._followed() if t.record.state.is_terminal]
            if all(self._caught_up(t) for t in ended) and not self._agent_log_waits():
                return True
            if loop.time() >= end:
                return False
            self.wake()
            await asyncio.sleep(0.05)

    # -- one round ---------------------------------------------------------------------------

    async def _round(self) -> str:
        """Pick and prepare one write, and have it sent: "idle" (nothing more now), "more"
        (send again at once) or "failed" (wait the sender's delay). A write that leaves more
        to send (`full`) is sent while the next round prepares the next write, whose calls
        wait for its answer: one write in flight at a time, its calls in order."""
        followed = self._followed()
        destinations = {t: t.destination(self._site, self._batch_resource) for t in followed}
        agent_log = self._agent_log if self._agent_log_on else None
        agent_entries = agent_log.take(MAX_ENTRIES // 2) if agent_log is not None else []
        flying = self._in_flight[1].segments if self._in_flight is not None else {}
        picks, full = pick(followed, self._workdir, flying)
        write = None
        if picks or agent_entries:
            masker = self._masker if self._masker else None
            now_ns = time.time_ns()
            write = await self._in_thread(
                functools.partial(build, picks, self._workdir, destinations, masker, now_ns)
            )
            write.full |= full
            if agent_entries:  # a call of their own: the rest was encoded in a worker thread
                write.bodies += bodies([encode(entry) for entry in agent_entries])
        if not await self._landed(agent_entries):
            return "failed"
        if write is None or not write.bodies:
            await self._sender.save_unsaved()
            self._wake_drained()
            return "more" if write is not None and write.segments else "idle"
        if write.full:  # more to send at once: this one is sent while the next is made
            sending = asyncio.ensure_future(self._sender.send(write))
            self._in_flight = (sending, write, agent_entries)
            return "more"
        if not await self._sender.send(write):
            self._put_back(agent_entries)
            return "failed"
        self._wake_drained()
        return "idle"

    async def _landed(self, newer_entries: list[dict[str, Any]]) -> bool:
        """Wait for the answer to the write in flight, if any: True when it landed (or none
        was in flight). If it failed, the agent-log entries of both it and the write made
        meanwhile (`newer_entries`, never sent) go back to the agent log, the older first."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return True
        sending, _, entries = in_flight
        if not await sending:
            self._put_back(newer_entries)
            self._put_back(entries)  # taken again first: put back last
            return False
        self._wake_drained()
        return True

    def _put_back(self, entries: list[dict[str, Any]]) -> None:
        if entries and self._agent_log is not None:
            self._agent_log.put_back(entries)

    def _in_thread(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Run `call` in the writer's own thread (reading, building): its memory stays in one
        malloc arena, not spread over those of the loop's whole pool."""
        return asyncio.get_running_loop().run_in_executor(self._threads, call)

    def _in_send_thread(self, call: Callable[[], T]) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._send_thread, call)

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

    def _still_ours(self, records: list[TaskRecord]) -> list[TaskRecord]:
        """Those of `records` the agent still has and did not drain: only these are saved (a
        deleted task's record must not come back)."""
        alive = {id(r) for r in self._records()}
        return [r for r in records if id(r) in alive and id(r) not in self._forgotten]

    # -- helpers -----------------------------------------------------------------------------

    def _task_log(self, record: TaskRecord) -> TaskLog:
        task_log = self._logs.get(record.task_id)
        if task_log is None or task_log.record is not record:
            task_log = self._logs[record.task_id] = TaskLog(record, self._mode)
            # Every task is seen here first (a round, a drain, the exit's flush): one that
            # ships turns the agent's log on, even if it is deleted before the next round.
            self._agent_log_on |= task_log.enabled
        return task_log

    def _agent_log_waits(self) -> bool:
        return self._agent_log_on and self._agent_log is not None and self._agent_log.waiting()

    def _may_read(self, task_log: TaskLog) -> bool:
        return not task_log.needs_secrets or self._masker.knows(task_log.record.task_id)

    def _caught_up(self, task_log: TaskLog) -> bool:
        """Whether every byte of the task's output is in Cloud Logging (or cannot be read)."""
        if task_log.pending():
            return False
        if all(size <= start for _, _, start, size, _ in streams(task_log, self._workdir)):
            return True  # asked first: most tasks are done then, and need no plan (secrets)
        return not self._may_read(task_log)  # unknown values: nothing of it may be sent

    def _wake_drained(self) -> None:
        for name, done in self._draining.items():
            task_log = self._logs.get(name)
            if task_log is None or self._caught_up(task_log):
                done.set()
