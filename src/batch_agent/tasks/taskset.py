"""TaskSet: every task of this agent, one slot each; the only owner of task state changes.

The report loop talks to tasks through this façade only: `resume` at start-up, `apply` for
each response (accept, cancel, delete, barriers), `preempted`, `snapshot` for each report and
`close` at the end. `transition` is the one way a task's state changes: it checks the edge
(`record.EDGES`), appends the event, asks for an early report and persists (the report waits
for the save: persist before report). A deleted task leaves the reports at once; its teardown
(stop, remove containers, forget the record and folder) runs in the background, so a task
that ignores SIGTERM never holds up the reports of the others; its record stays on disk until
the teardown is done.
How one task's run is put together (drivers, hooks) is `assembly`'s. Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_agent.names import parse_task_name
from batch_agent.store import StorageError, TaskStore
from batch_agent.tasks import events
from batch_agent.tasks.assembly import EngineOnDemand, choose_runtime, make_run
from batch_agent.tasks.assembly import TaskSettings as TaskSettings  # TaskSet's callers make one
from batch_agent.tasks.events import ExitCode
from batch_agent.tasks.filework import FileWork
from batch_agent.tasks.folders import remove_task_dir, task_dir
from batch_agent.tasks.record import TaskRecord
from batch_agent.wire import AgentTaskInfo, TaskState

# The task side (task models, plans, runs, drivers) is imported where a task needs it: an
# agent reports (its first report above all) before it has any task, without loading it.
if TYPE_CHECKING:
    from batch_agent.tasks.plan import TaskPlan
    from batch_agent.tasks.runner import TaskRun
    from batch_agent.wire import AgentTask, AgentTaskHead, BadAgentTask

log = logging.getLogger(__name__)

TEARDOWN_AT_CLOSE = timedelta(seconds=2)  # how long an agent on its way out finishes deletions


@dataclass
class _Slot:
    record: TaskRecord
    run: TaskRun | None = None
    driving: asyncio.Task[None] | None = None
    teardown: asyncio.Task[None] | None = None  # set once the server said DELETED


class TaskSet:
    def __init__(
        self, store: TaskStore, settings: TaskSettings, *, on_change: Callable[[], None]
    ) -> None:
        self._store = store
        self._settings = settings
        self._on_change = on_change
        self._slots: dict[str, _Slot] = {}
        self._containers = EngineOnDemand(settings.docker_host)
        self._preempted = False
        self._deleted_failed = False  # a task that FAILED was since deleted (for --once)
        # Deleted tasks' folders, in a FileWork of their own: a response deletes several tasks
        # at once (one trip for all), and a big folder takes long to remove: new tasks' files
        # must not wait behind it.
        self._removals = FileWork()

    # -- the façade ---------------------------------------------------------------------------

    async def resume(self, *, rebooted: bool) -> None:
        """Take up the tasks an earlier agent left; after a reboot, fail the unfinished ones."""
        for record in self._store.load_all():
            slot = self._slots[record.task_id] = _Slot(record)
            if record.state.is_terminal:
                continue
            if rebooted:
                # ASSIGNED/RUNNING -> FAILED: the VM rebooted under the task
                await self.transition(
                    record,
                    TaskState.FAILED,
                    exit_code=ExitCode.VM_REBOOTED,
                    cause=events.VM_REBOOTED,
                )
                continue
            log.info("task %s: resuming after an agent restart (%s)", record.task_id, record.state)
            from batch_agent.wire import IntendedState, parse_agent_task

            task = parse_agent_task(record.raw)
            plan = await self._plan_or_fail(record, task)
            if plan is not None:
                cancelled = task.intended_state is IntendedState.CANCELLED
                self._launch(slot, plan, cancelled=cancelled, resumed=True)

    async def apply(self, tasks: list[dict[str, Any]]) -> int:
        """Apply a response's tasks; returns how many were new. The new ones are saved in one
        commit, before any of them starts."""
        if not tasks:
            return 0
        from batch_agent.wire import (
            AgentTaskHead,
            BadAgentTask,
            IntendedState,
            parse_agent_task,
            parse_task_head,
        )

        # What the server wants of each task: CANCELLED, and the barrier reached (None: not
        # known, the task could not be read).
        seen: list[tuple[_Slot, IntendedState | None, int | None]] = []
        new: list[tuple[_Slot, AgentTask | BadAgentTask]] = []
        for raw in tasks:
            # A known task needs only its head: a response repeats every task it has not
            # deleted, and parsing each one's spec in full again was most of this method.
            task: AgentTaskHead | AgentTask | BadAgentTask | None = parse_task_head(raw)
            if task is None or task.task not in self._slots:
                task = parse_agent_task(raw)
            name = task.task
            if not name:
                log.error("response task without a name ignored: %.200s", raw)
                continue
            slot = self._slots.get(name)
            if task.intended_state is IntendedState.DELETED:
                if slot is not None and slot.teardown is None:
                    slot.teardown = asyncio.create_task(self._tear_down(slot))
                continue
            if slot is not None and slot.teardown is not None:
                continue  # the same name again (a retry): accepted once the old one is gone
            if slot is None:
                assert not isinstance(task, AgentTaskHead)
                slot = self._slots[name] = _Slot(TaskRecord(task_id=name, raw=dict(raw)))
                new.append((slot, task))
            barrier = None if isinstance(task, BadAgentTask) else task.reached_barrier
            seen.append((slot, task.intended_state, barrier))
        await self._accept(new)
        for slot, intended, barrier in seen:
            if slot.run is None:
                continue
            if intended is IntendedState.CANCELLED:
                slot.run.cancel()
            if barrier is not None:
                slot.run.update_barrier(barrier)
        return len(new)

    def preempted(self) -> None:
        """The VM got its preemption notice: the failures that follow are the preemption's."""
        self._preempted = True
        for slot in self._slots.values():
            if slot.run is not None:
                slot.run.preempted()

    def snapshot(self) -> list[AgentTaskInfo]:
        """Every task the server has not deleted, as a report carries it."""
        return [s.record.info() for s in self._slots.values() if s.teardown is None]

    def records(self) -> list[TaskRecord]:
        """The records of the tasks in `snapshot`, for `batch-agent status`: read, never change."""
        return [s.record for s in self._slots.values() if s.teardown is None]

    def all_records(self) -> list[TaskRecord]:
        """Every task's record, those being deleted too (their output is still being shipped)."""
        return [s.record for s in self._slots.values()]

    def job_and_group(self) -> tuple[str | None, str | None]:
        """`AgentInfo.jobId`/`taskGroupId` ("the assigned Job ID", "task group ID"), as far as
        the tasks' names tell: the job's uid (`j-...`) from `task/JOB_UID-GROUP-INDEX/...`, the
        job id from a resource name; the group id from either (docs/choices.md)."""
        for slot in self._slots.values():
            name = parse_task_name(slot.record.task_id)
            if name.job is not None:
                return name.job, name.group
        return None, None

    def all_done(self) -> bool:
        return all(s.record.state.is_terminal for s in self._slots.values())

    def any_failed(self) -> bool:
        states = (s.record.state for s in self._slots.values())
        return self._deleted_failed or TaskState.FAILED in states

    async def cancel_all(self, timeout: timedelta) -> None:
        """Cancel every unfinished task as the server's CANCELLED would, and wait at most
        `timeout` for them to end: for an agent whose `local` is gone, so that no task of a
        run nobody watches goes on."""
        driving = []
        for slot in self._slots.values():
            if slot.run is not None and slot.driving is not None and not slot.driving.done():
                slot.run.cancel()
                driving.append(slot.driving)
        if driving:
            await asyncio.wait(driving, timeout=timeout.total_seconds())

    async def close(self) -> None:
        """Leave every task running (they outlive the agent) and stop driving them. Deletions
        under way get TEARDOWN_AT_CLOSE to finish (a record left behind is deleted again by the
        next agent, when the server repeats DELETED)."""
        deleting = [
            s.teardown for s in self._slots.values() if s.teardown and not s.teardown.done()
        ]
        if deleting:
            await asyncio.wait(deleting, timeout=TEARDOWN_AT_CLOSE.total_seconds())
        running = [t for s in self._slots.values() for t in (s.driving, s.teardown) if t]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._containers.close()
        self._settings.files.close()
        self._removals.close()

    # -- the one state change -----------------------------------------------------------------

    async def transition(
        self,
        record: TaskRecord,
        new: TaskState,
        *,
        exit_code: int | None = None,
        cause: str | None = None,
    ) -> None:
        """Move `record` to `new`: edge check, event, report early, persist (before the
        report goes out: the reporter waits for every save under way). Raises
        IllegalTransition for an edge the state machine does not have.

        A terminal state is fsynced before it is reported: the server hears it once and for
        good. RUNNING only has to survive an agent crash: after an OS crash or power loss the
        VM has rebooted, and the next agent fails every unfinished task with 50003 whatever
        the disk says about it (docs/choices.md, "Durability and restarts")."""
        now = self._settings.now()
        record.transition(new, at=now, where=self._settings.where, exit_code=exit_code, cause=cause)
        # Asked for now, with the change: a report waits for the save (`TaskStore.settled`),
        # and one built meanwhile carries the change already, so a notice after the save
        # would ask for a second report with nothing new in it.
        self._on_change()
        try:
            await self._store.save(record, durable=new.is_terminal)
        except StorageError as error:
            # Reported from memory all the same; the store writes it at its next chance.
            log.error("task %s: %s not recorded yet: %s", record.task_id, new, error)
        log.info("task %s: %s", record.task_id, record.events[-1]["description"])

    async def persist(self, record: TaskRecord) -> None:
        """Save the record (a runnable's intent, an event, output offsets) so that it survives
        an agent crash; not fsynced, as only a reboot loses it and a reboot fails the task
        anyway (see `transition`). One the state dir refuses (the store logs it) is written at
        the store's next chance, and the task goes on: failing a running task for our disk
        would be worse than the rare second start a crash in the meantime could bring."""
        with contextlib.suppress(StorageError):
            await self._store.save(record, durable=False)

    def notify(self) -> None:
        self._on_change()

    # -- one task's life ----------------------------------------------------------------------

    async def _accept(self, tasks: list[tuple[_Slot, AgentTask | BadAgentTask]]) -> None:
        """Tasks seen for the first time (their slots just made): persist them, in one commit,
        before anything runs, then start them."""
        accepted: list[tuple[_Slot, TaskPlan, AgentTask | BadAgentTask]] = []
        for slot, task in tasks:
            # A bad spec: one save, of its failure.
            plan = await self._plan_or_fail(slot.record, task)
            if plan is not None:
                accepted.append((slot, plan, task))
        if not accepted:
            return
        from batch_agent.wire import IntendedState

        for slot, _, _ in accepted:
            choose_runtime(slot.record, self._settings)  # saved with the task, on disk first
        try:
            await self._store.save_many([slot.record for slot, _, _ in accepted])
        except StorageError as error:
            for slot, _, _ in accepted:
                # ASSIGNED -> FAILED: a task the agent cannot record must not run (a crash would
                # forget it and the server's next answer would start it a second time)
                await self.transition(
                    slot.record,
                    TaskState.FAILED,
                    exit_code=ExitCode.AGENT_FAILURE,
                    cause=events.CANNOT_RECORD.format(reason=error),
                )
            return
        for slot, plan, task in accepted:
            log.info("task %s: accepted", task.task)
            self._launch(slot, plan, cancelled=task.intended_state is IntendedState.CANCELLED)

    async def _plan_or_fail(
        self, record: TaskRecord, task: AgentTask | BadAgentTask
    ) -> TaskPlan | None:
        """The task's plan; or, for a spec that cannot run, None with the task FAILED (50000,
        every problem named)."""
        from batch_agent.tasks.plan import PlanError, make_plan
        from batch_agent.wire import AgentTask, BadAgentTask

        problems = task.problems if isinstance(task, BadAgentTask) else []
        if isinstance(task, AgentTask):
            try:
                return make_plan(task)
            except PlanError as error:
                problems = error.problems
        log.error("task %s: invalid spec: %s", record.task_id, "; ".join(problems))
        # ASSIGNED -> FAILED: the spec cannot run
        await self.transition(
            record,
            TaskState.FAILED,
            exit_code=ExitCode.AGENT_FAILURE,
            cause=events.invalid_spec(problems),
        )
        return None

    def _launch(
        self, slot: _Slot, plan: TaskPlan, *, cancelled: bool, resumed: bool = False
    ) -> None:
        run = make_run(
            slot.record,
            plan,
            self._settings,
            lifecycle=self,
            engine=self._containers,
            resumed=resumed,
        )
        if cancelled:
            run.cancel()
        if self._preempted:
            run.preempted()
        slot.run = run
        slot.driving = asyncio.create_task(self._drive(run))

    async def _drive(self, run: TaskRun) -> None:
        try:
            await run.run()
        except Exception:  # a bug in one task's run must not take the agent down
            log.exception("task %s: the agent failed while running it", run.record.task_id)
            if not run.record.state.is_terminal:
                # ASSIGNED/RUNNING -> FAILED: our own fault, said as such
                await self.transition(
                    run.record,
                    TaskState.FAILED,
                    exit_code=ExitCode.AGENT_FAILURE,
                    cause=events.INTERNAL_ERROR,
                )
        if not run.record.state.is_terminal:  # a terminal state asked for its report itself
            self._on_change()

    async def _tear_down(self, slot: _Slot) -> None:
        """Stop what still runs of a deleted task, then forget it (record last: crash-safe)."""
        name = slot.record.task_id
        if slot.run is not None and slot.driving is not None and not slot.driving.done():
            slot.run.cancel()
            await asyncio.gather(slot.driving, return_exceptions=True)
        if any(r.container for r in slot.record.runnables.values()):
            from batch_agent.tasks.container_driver import remove_task_containers

            error = await remove_task_containers(self._containers(), name)
            if error is not None:
                log.warning("task %s: containers not removed: %s", name, error)
        if self._settings.drain_logs is not None:
            await self._settings.drain_logs(slot.record)  # its last lines, before its files go
        # The server may assign the same name again (a retry): it starts from clean folders.
        roots = {self._settings.workdir}
        if slot.record.runtime is not None:  # its scripts and exit statuses, maybe on tmpfs
            roots.add(Path(slot.record.runtime))
        await self._removals.run(functools.partial(_remove_folders, roots, name))
        self._store.forget(name)  # with the next commit: it needs none of its own
        self._deleted_failed |= slot.record.state is TaskState.FAILED
        del self._slots[name]
        log.info("task %s: deleted", name)


def _remove_folders(roots: set[Path], name: str) -> None:
    """Remove task `name`'s folder under each of `roots` (blocks on the disk; `remove_task_dir`
    logs a failed removal itself)."""
    for root in sorted(roots):
        remove_task_dir(root, task_dir(root, name))
