"""One task's runnables through their drivers: start one (its intent saved first), or recover
it after an agent restart, and record how each ended.

What is saved and when is the runner's list ("What is saved when"): the intent before the
start, with ASSIGNED -> RUNNING when it is the first; a container's start and end at once; a
script's pid and exit code with the next save; an event for a runnable with a display name.
Decides nothing of the sequence (what runs next, what fails the task): the run does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any

from batch_agent.tasks import events
from batch_agent.tasks.deadlines import Deadlines
from batch_agent.tasks.driver import Driver, Finished, Started
from batch_agent.tasks.execution import Execution, ExitResult, Handle
from batch_agent.tasks.lifecycle import Lifecycle
from batch_agent.tasks.plan import RunnablePlan
from batch_agent.tasks.record import RunnableRecord, TaskRecord
from batch_agent.tasks.sequence import cannot_start, task_code
from batch_agent.tasks.shipping import LiveOutput
from batch_agent.wire import TaskState, format_time

log = logging.getLogger(__name__)


class Runnables:
    def __init__(
        self,
        record: TaskRecord,
        *,
        lifecycle: Lifecycle,
        drivers: Mapping[type, Driver],
        deadlines: Deadlines,
        output: LiveOutput,
        now: Callable[[], datetime],
        resumed: bool = False,
    ) -> None:
        self._record = record
        self._lifecycle = lifecycle
        self._drivers = drivers  # by the type of a runnable's action
        self._deadlines = deadlines
        self._output = output
        self._now = now
        # An earlier agent may have started the first runnable it did not record: a script
        # starts without waiting for its intent's save. Until that one is looked for, nothing
        # is made ahead (a script's files would replace the status file that tells).
        self._unsure = resumed

    async def start(self, runnable: RunnablePlan) -> Execution | ExitResult:
        """Start (or, after an agent restart, recover) one runnable through its driver; an
        ExitResult (with the task's code and the event's cause) when it could not start."""
        k = runnable.index
        driver = self._drivers[type(runnable.action)]
        known = self._record.runnables.get(k)
        if known is not None:
            log.info("task %s: reattaching to %s", self._record.task_id, runnable.label)
            if known.exit_code is not None:  # ended and recorded before a restart
                return Finished(ExitResult(known.exit_code))
            found = await driver.recover(runnable, known.handle())
            if isinstance(found, ExitResult):
                return ExitResult(task_code(found), reason=found.reason)
            self._deadlines.started(runnable)
            return found
        if self._unsure:
            self._unsure = False
            earlier = await driver.find(runnable)
            if earlier is not None:
                log.info(
                    "task %s: %s was started before an agent restart",
                    self._record.task_id,
                    runnable.label,
                )
                return await self._found(runnable, earlier)
        prepared = driver.prepare(runnable)
        if isinstance(prepared, ExitResult):
            return cannot_start(k, prepared)
        # The intent to start, saved before the start (or, for a script, while it starts: an
        # unrecorded start is found by `find`): a crash never leads to a second start. The
        # driver starts the runnable once the save is done, or (a script) at once, while it
        # is under way: see its `Prepared.start`.
        intent = asyncio.ensure_future(self._record_start(k, prepared.handle))
        try:
            started = await prepared.start(intent)
        finally:
            await intent  # the run goes on once it is saved; raises what the save raised
        if isinstance(started, ExitResult):
            self._record.runnables[k].exit_code = task_code(started)
            self._record.runnables[k].ended_at = self._record.runnables[k].started_at
            await self._lifecycle.persist(self._record)
            return cannot_start(k, started)
        self._record.runnables[k].adopt(started.handle)  # a script's pid: saved with the next save
        self._deadlines.started(runnable)
        if runnable.display_name:
            await self.event(events.runnable_started(runnable.display_name))
        elif started.handle.container:
            await self._lifecycle.persist(self._record)
        self._lifecycle.notify()
        log.info("task %s: started %s", self._record.task_id, runnable.label)
        return started.execution

    def ahead(self, runnable: RunnablePlan, *, hooks_done: bool = False) -> None:
        """`runnable` is likely to start next: let its driver get ready (a script's files,
        and its waiter once the prestart `hooks_done`)."""
        driver = self._drivers.get(type(runnable.action))  # none for a barrier
        if driver is not None and runnable.index not in self._record.runnables and not self._unsure:
            driver.ahead(runnable, hooks_done=hooks_done)

    async def dismiss_ahead(self) -> None:
        """The sequence is over: what was made ready ahead and did not start is let go."""
        for driver in set(self._drivers.values()):
            await driver.dismiss_ahead()

    async def _found(self, runnable: RunnablePlan, started: Started) -> Execution:
        """Record a runnable an earlier agent started but did not record, as if just started
        (its start time unknown: now)."""
        await self._record_start(runnable.index, started.handle)
        self._deadlines.started(runnable)
        return started.execution

    def _record_start(self, k: int, handle: Handle) -> Coroutine[Any, Any, None]:
        """Record runnable `k` as started now, with `handle`; returns its save, which carries
        ASSIGNED -> RUNNING when it is the task's first."""
        self._record.runnables[k] = RunnableRecord(started_at=format_time(self._now()))
        self._record.runnables[k].adopt(handle)
        self._record.runnable = max(self._record.runnable, k)
        if self._record.state is TaskState.ASSIGNED:
            # ASSIGNED -> RUNNING: saved with this first start, in one commit
            return self._lifecycle.transition(self._record, TaskState.RUNNING)
        return self._lifecycle.persist(self._record)

    async def finished(self, runnable: RunnablePlan, result: ExitResult) -> None:
        """Record how `runnable` ended (once: not again after an agent restart), ship the rest
        of its output, and say so."""
        record = self._record.runnables.setdefault(runnable.index, RunnableRecord())
        if record.exit_code is not None:
            return  # recorded before an agent restart
        record.exit_code = task_code(result)
        record.ended_at = record.ended_at or format_time(self._now())
        self._deadlines.ended(runnable)
        await self._output.ship(final=True, only=runnable.index)
        if runnable.display_name:
            await self.event(events.runnable_finished(runnable.display_name, record.exit_code))
        elif record.container:
            await self._lifecycle.persist(self._record)  # the container is removed after this
        self._lifecycle.notify()
        log.info(
            "task %s: %s exited %d%s",
            self._record.task_id,
            runnable.label,
            result.exit_code,
            f" ({result.reason})" if result.reason else "",
        )

    async def event(self, description: str) -> None:
        """An informational event: saved at once, like a state change."""
        self._record.add_event(description, at=self._now())
        await self._lifecycle.persist(self._record)
