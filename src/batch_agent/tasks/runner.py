"""TaskRun: drives one task's plan from ASSIGNED to SUCCEEDED or FAILED.

Order, alwaysRun, ignoreExitStatus, background, barriers, timeouts, cancellation; every state
change goes through `_transition`, which appends the event, persists, then asks for a report.
It knows nothing of HTTP or the store's form: persistence and reporting are callbacks. After an
agent restart the same code resumes from the record: finished runnables are not run again,
started ones are reattached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from batch_agent.tasks import events
from batch_agent.tasks.events import ExitCode
from batch_agent.tasks.execution import Execution, ExitResult
from batch_agent.tasks.launch import Launcher, task_dir
from batch_agent.tasks.plan import RunnablePlan, TaskPlan
from batch_agent.tasks.record import RunnableRecord, TaskRecord
from batch_agent.tasks.script import ScriptExecution
from batch_agent.tasks.taskoutput import TaskOutput
from batch_agent.wire import TaskState, format_duration

if TYPE_CHECKING:
    from batch_agent.tasks.docker import ContainerEngine

log = logging.getLogger(__name__)

SHIP_EVERY = 0.5  # seconds between output shipments while a runnable runs
STOP_SLACK = timedelta(seconds=10)  # beyond the grace, how long a stop may take at most


@dataclass
class RunContext:
    """What every task run of this agent shares."""

    workdir: Path  # per-agent; each task gets a folder below it
    where: str  # `zones/<zone>/instances/<id>`, for event wording
    base_env: Mapping[str, str]
    persist: Callable[[TaskRecord], Awaitable[None]]
    notify: Callable[[], None]  # a state change happened: report early
    # The Docker engine, made on first use (so that script-only VMs never load the SDK).
    containers: Callable[[], ContainerEngine]
    # Where runnables' output goes: (tag, "stdout" | "stderr", lines); may block briefly.
    output: Callable[[str, str, Sequence[str]], None]
    kill_grace: timedelta = timedelta(seconds=10)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


def next_runnable(
    runnables: tuple[RunnablePlan, ...], after: int, *, failed: bool, expired: bool
) -> RunnablePlan | None:
    """The next runnable to start after 1-based index `after`, or None when the task is done.

    After a failure only alwaysRun runnables start; once maxRunDuration expired nothing does.
    """
    if expired:
        return None
    for runnable in runnables[after:]:
        if failed and not runnable.always_run:
            continue
        return runnable
    return None


class TaskRun:
    def __init__(self, record: TaskRecord, plan: TaskPlan, context: RunContext) -> None:
        self.record = record
        self.plan = plan
        self._context = context
        self._dir = task_dir(context.workdir, record.task_id)
        self._launcher = Launcher(
            plan,
            self._dir,
            base_env=context.base_env,
            containers=context.containers,
            instance=context.where,
            task_id=record.task_id,
        )
        self._cancelled = asyncio.Event()
        self._barrier_moved = asyncio.Event()
        self._reached_barrier = 0
        self._task_output = TaskOutput(self._dir, f"task {plan.task_index}", context.output)
        self._preempted = False

    # -- commands from the agent --------------------------------------------------------------

    def cancel(self) -> None:
        """The server said CANCELLED: stop everything of the task, then report FAILED."""
        self._cancelled.set()

    def preempted(self) -> None:
        """The VM got its preemption notice: failures from now on are the preemption's."""
        self._preempted = True

    def update_barrier(self, reached: int) -> None:
        if reached > self._reached_barrier:
            self._reached_barrier = reached
            self._barrier_moved.set()

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the task to a terminal state. Cancelling this coroutine (agent stop) leaves
        processes running and the record as persisted, for the next agent to resume."""
        if self.record.state.is_terminal:
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        if self._cancelled.is_set():
            # ASSIGNED -> FAILED: cancelled before anything started
            await self._transition(
                TaskState.FAILED,
                exit_code=ExitCode.AGENT_FAILURE,
                cause=events.CANCELLED_BEFORE_START,
            )
            return
        if self.record.state is TaskState.ASSIGNED:
            problem = self._check_user()
            if problem is not None:
                # ASSIGNED -> FAILED: the user account cannot run anything here
                await self._transition(
                    TaskState.FAILED, exit_code=ExitCode.AGENT_FAILURE, cause=problem
                )
                return
            await self._transition(TaskState.RUNNING)  # ASSIGNED -> RUNNING
        shipping = asyncio.create_task(self._ship_continuously())
        try:
            exit_code, cause = await self._run_sequence()
        finally:
            shipping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shipping
        await self._ship(final=True)
        if any(r.container and r.container.block_external_network for r in self.plan.runnables):
            await self._context.containers().remove_network(self._launcher.network)
        if exit_code != 0 and self._preempted:
            # The VM is going away: the kills that follow are not the user's failure.
            exit_code, cause = ExitCode.PREEMPTED, events.PREEMPTED
        if exit_code == 0:
            await self._transition(TaskState.SUCCEEDED, exit_code=0)  # RUNNING -> SUCCEEDED
        else:
            await self._transition(TaskState.FAILED, exit_code=exit_code, cause=cause)

    async def _run_sequence(self) -> tuple[int, str | None]:
        """Run runnables in order; returns the task's exit code and, for reserved codes, why."""
        failure: tuple[int, str | None] | None = None
        background: list[tuple[RunnablePlan, asyncio.Future[ExitResult], Execution]] = []
        position = 0
        while True:
            expired = self._remaining() == timedelta(0)
            if expired and failure is None:
                failure = (ExitCode.TIMED_OUT, self._max_run_cause())
            runnable = next_runnable(
                self.plan.runnables, position, failed=failure is not None, expired=expired
            )
            if runnable is None or self._cancelled.is_set():
                break
            position = runnable.index
            if runnable.is_barrier:
                await self._wait_barrier(runnable)
                continue
            started = await self._start(runnable)
            if isinstance(started, ExitResult):
                failure = failure or (ExitCode.AGENT_FAILURE, started.reason)
                continue
            if runnable.background:
                background.append((runnable, asyncio.ensure_future(started.wait()), started))
                continue
            outcome = await self._wait(runnable, started)
            if outcome is not None and failure is None:
                failure = outcome
        # A background runnable that failed on its own, before we stop the rest, fails the task
        # only when nothing else did (our choice; Batch does not say).
        background_failure = next(
            (
                (done.result().exit_code, None)
                for runnable, done, _ in background
                if done.done() and not done.result().ok and not runnable.ignore_exit_status
            ),
            None,
        )
        stopped = await self._stop_all([execution for _, _, execution in background])
        for runnable, done, _ in background:
            await self._finished(runnable, await done)
        if self._cancelled.is_set():
            if not stopped:
                return ExitCode.NOT_CANCELLABLE, events.NOT_CANCELLABLE
            code = failure[0] if failure else ExitCode.AGENT_FAILURE
            return code, events.CANCELLED
        return failure or background_failure or (0, None)

    async def _wait(
        self, runnable: RunnablePlan, execution: Execution
    ) -> tuple[int, str | None] | None:
        """Wait for a foreground runnable, enforcing its timeout, maxRunDuration and cancel.
        Returns the failure it caused, if any."""
        limit, cause = self._limit(runnable)
        waiting = asyncio.ensure_future(execution.wait())
        cancelled = asyncio.ensure_future(self._cancelled.wait())
        timeout = limit.total_seconds() if limit is not None else None
        try:
            await asyncio.wait({waiting, cancelled}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            cancelled.cancel()
        if not waiting.done():
            stopped = await self._stop(execution)
            if not stopped:
                waiting.cancel()
                return ExitCode.NOT_CANCELLABLE, events.NOT_CANCELLABLE
            result = await waiting
            await self._finished(runnable, result)
            if self._cancelled.is_set():
                return result.exit_code, events.CANCELLED
            log.info("task %s: %s timed out (%s)", self.record.task_id, runnable.label, cause)
            return ExitCode.TIMED_OUT, cause
        result = waiting.result()
        await self._finished(runnable, result)
        if result.ok or runnable.ignore_exit_status:
            return None
        return result.exit_code, None

    async def _start(self, runnable: RunnablePlan) -> Execution | ExitResult:
        """Start (or, after an agent restart, find again) one script or container runnable."""
        k = runnable.index
        known = self.record.runnables.get(k)
        if known is not None:
            log.info("task %s: reattaching to %s", self.record.task_id, runnable.label)
            return await self._launcher.find(runnable, known)
        program: Path | None = None
        if runnable.container is None:
            checked = self._launcher.program(runnable)
            if isinstance(checked, ExitResult):
                return checked
            program = checked
        # Persist the intent first: a crash after the spawn must never lead to a second spawn.
        self.record.runnables[k] = RunnableRecord(container=runnable.container is not None)
        self.record.runnable = max(self.record.runnable, k)
        await self._context.persist(self.record)
        started = await self._launcher.start(runnable, program)
        if isinstance(started, ExitResult):
            code = started.exit_code if started.started else ExitCode.AGENT_FAILURE
            self.record.runnables[k].exit_code = code
            await self._context.persist(self.record)
            reason = started.reason or f"exit code {code}"
            return ExitResult(code, reason=events.cannot_start(k, reason))
        if isinstance(started, ScriptExecution):
            # Saved with the next save: a restarted agent finds the waiter by its command line.
            self.record.runnables[k].pid = started.pid
            self.record.runnables[k].start_time = started.start_time
        if runnable.display_name:
            self.record.add_event(events.runnable_started(runnable.display_name), at=self._now())
        if runnable.display_name or not isinstance(started, ScriptExecution):
            await self._context.persist(self.record)  # an event, or a container's start
        self._context.notify()
        log.info("task %s: started %s", self.record.task_id, runnable.label)
        return started

    async def _finished(self, runnable: RunnablePlan, result: ExitResult) -> None:
        record = self.record.runnables.setdefault(runnable.index, RunnableRecord())
        if record.exit_code is not None:
            return  # recorded before an agent restart
        record.exit_code = result.exit_code
        await self._ship(final=True, only=runnable.index)
        if runnable.display_name:
            description = events.runnable_finished(runnable.display_name, result.exit_code)
            self.record.add_event(description, at=self._now())
        if record.container:
            await self._context.persist(self.record)  # the container is removed after this
        # A script's result is not saved here: the waiter's status file holds it until the next
        # save (the next runnable's start, or the task's end) carries it. One fsync less each.
        self._context.notify()
        log.info(
            "task %s: %s exited %d%s",
            self.record.task_id,
            runnable.label,
            result.exit_code,
            f" ({result.reason})" if result.reason else "",
        )

    async def _wait_barrier(self, runnable: RunnablePlan) -> None:
        """Report `runnable = k` and wait for `reachedBarrier >= k`, cancel or the deadline."""
        k = runnable.index
        self.record.runnable = max(self.record.runnable, k)
        if runnable.display_name:
            self.record.add_event(events.barrier_reached(runnable.display_name), at=self._now())
        await self._context.persist(self.record)
        self._context.notify()
        while self._reached_barrier < k and not self._cancelled.is_set():
            remaining = self._remaining()
            if remaining == timedelta(0):
                return
            self._barrier_moved.clear()
            waits = [
                asyncio.ensure_future(self._barrier_moved.wait()),
                asyncio.ensure_future(self._cancelled.wait()),
            ]
            timeout = remaining.total_seconds() if remaining is not None else None
            try:
                await asyncio.wait(waits, timeout=timeout, return_when="FIRST_COMPLETED")
            finally:
                for w in waits:
                    w.cancel()

    async def _stop(self, execution: Execution) -> bool:
        """Stop one execution; False if it could not be stopped. The executions bound their
        own wait after SIGKILL; STOP_SLACK only catches a stop that hangs altogether (an engine
        that never answers)."""
        grace = self._context.kill_grace
        try:
            return await asyncio.wait_for(
                execution.stop(grace), (grace + 2 * STOP_SLACK).total_seconds()
            )
        except TimeoutError:
            return False

    async def _stop_all(self, executions: list[Execution]) -> bool:
        results = await asyncio.gather(*(self._stop(e) for e in executions))
        return all(results)

    # -- limits -------------------------------------------------------------------------------

    def _remaining(self) -> timedelta | None:
        """Time left of maxRunDuration, counted from the persisted start (restarts don't reset)."""
        if self.plan.max_run_duration is None or self.record.started_at is None:
            return None
        started = datetime.fromisoformat(self.record.started_at.replace("Z", "+00:00"))
        left = started + self.plan.max_run_duration - self._context.now()
        return max(left, timedelta(0))

    def _max_run_cause(self) -> str:
        assert self.plan.max_run_duration is not None
        return events.timed_out(
            events.max_run_duration(format_duration(self.plan.max_run_duration))
        )

    def _limit(self, runnable: RunnablePlan) -> tuple[timedelta | None, str | None]:
        remaining = self._remaining()
        if runnable.timeout is not None and (remaining is None or runnable.timeout < remaining):
            limit = runnable.timeout
            return limit, events.timed_out(
                events.runnable_timeout(runnable.index, format_duration(limit))
            )
        if remaining is not None:
            return remaining, self._max_run_cause()
        return None, None

    # -- output -------------------------------------------------------------------------------

    async def _ship_continuously(self) -> None:
        """Ship output while runnables run; persist the offsets so that an agent restarted
        after a crash goes on from there instead of shipping lines twice."""
        shipped = self._offsets()
        while True:
            await asyncio.sleep(SHIP_EVERY)
            await self._ship(final=False)
            offsets = self._offsets()
            if offsets != shipped:
                shipped = offsets
                await self._context.persist(self.record)

    def _offsets(self) -> list[tuple[int, int]]:
        return [(r.stdout_offset, r.stderr_offset) for r in self.record.runnables.values()]

    async def _ship(self, *, final: bool, only: int | None = None) -> None:
        """Ship new output lines (in a worker thread), then record the custom events they held."""
        runnables = self.record.runnables
        if only is not None:
            chosen = {only: runnables[only]}
        else:  # those still running; a finished one was shipped to its end already
            chosen = {k: r for k, r in runnables.items() if r.exit_code is None}
        custom = await asyncio.to_thread(self._task_output.ship, chosen, final=final)
        if custom:
            for description in custom:
                self.record.add_event(description, at=self._now())
            await self._context.persist(self.record)
            self._context.notify()

    # -- helpers ------------------------------------------------------------------------------

    async def _transition(
        self, new: TaskState, *, exit_code: int | None = None, cause: str | None = None
    ) -> None:
        """The one way a run changes task state: event, persist, then ask for a report."""
        self.record.transition(
            new, at=self._context.now(), where=self._context.where, exit_code=exit_code, cause=cause
        )
        await self._context.persist(self.record)
        log.info("task %s: %s", self.record.task_id, self.record.events[-1]["description"])
        self._context.notify()

    def _now(self) -> datetime:
        return self._context.now()

    def _check_user(self) -> str | None:
        """Why the task's userAccount cannot run here, or None; gives it the task folder."""
        if self.plan.user is None:
            return None
        uid, gid = self.plan.user
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return f"userAccount: uid {uid} does not exist on this VM"
        os.chown(self._dir, uid, gid)
        return None
