"""The report loop: collect -> report -> reconcile tasks -> sleep, until told to stop.

Wires control (the Batch API), vm (facts about this machine), store (durable records) and tasks
(one TaskRun per task). Blocking calls run in worker threads; the loop itself never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from batch_agent import __version__
from batch_agent.config import Config
from batch_agent.control import Backoff, ControlPlane, ControlPlaneError
from batch_agent.outputlog import OutputLog
from batch_agent.store import TaskStore
from batch_agent.tasks import events
from batch_agent.tasks.env import base_environment
from batch_agent.tasks.events import ExitCode
from batch_agent.tasks.launch import LABEL_TASK, task_dir
from batch_agent.tasks.plan import PlanError, TaskPlan, make_plan
from batch_agent.tasks.record import TaskRecord
from batch_agent.tasks.runner import RunContext, TaskRun
from batch_agent.vm import (
    MetadataError,
    MetadataServer,
    VmIdentity,
    collect_metadata,
    read_boot_time,
    read_identity,
    read_os_release,
)
from batch_agent.wire import (
    AgentInfo,
    AgentMetadata,
    AgentState,
    AgentTask,
    AgentTimingInfo,
    BadAgentTask,
    IntendedState,
    ReportAgentStateRequest,
    ReportAgentStateResponse,
    TaskState,
    format_time,
    parse_agent_task,
)

if TYPE_CHECKING:
    from batch_agent.tasks.docker import ContainerEngine

log = logging.getLogger(__name__)
T = TypeVar("T")


class Unreachable(Exception):
    """The control plane (or metadata server) could not be reached within the budget."""


@dataclass
class Outcome:
    """How `run --once` ended."""

    failed: bool


class Agent:
    def __init__(self, config: Config, *, stop: asyncio.Event) -> None:
        self._config = config
        self._stop = stop
        self._control = ControlPlane(
            config.endpoint,
            timeout=config.request_timeout,
            application_default=config.credentials_file is not None,
            metadata_host=config.metadata_host,
        )
        self._metadata = MetadataServer(config.metadata_host)
        self._store = TaskStore(config.state_dir / "state.db")
        self._output = OutputLog(config.log_format)
        self._workdir = config.state_dir / "tasks"
        self._records: dict[str, TaskRecord] = {}
        self._runs: dict[str, TaskRun] = {}
        self._run_tasks: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._default_interval = config.default_report_interval
        self._min_interval = config.min_report_interval
        self._started = datetime.now(UTC)
        self._last_success = self._started
        self._state = AgentState.AGENT_STARTING
        self._identity: VmIdentity | None = None
        self._urgent = asyncio.Event()  # report now, even before minReportInterval
        self._boot_time = datetime.now(UTC)
        self._last_report = float("-inf")  # loop time of the last report sent
        self._deleted_failed = False  # a task that FAILED was since deleted (for --once's status)
        self._static: AgentMetadata | None = None
        self._engine: ContainerEngine | None = None

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, *, once: bool = False) -> Outcome:
        """Report until stopped (or, with once, until every task received has ended and its
        final state was reported). Raises Unreachable if --once never reached the servers."""
        try:
            await self._start_up(once=once)
            await self._loop(once=once)
        finally:
            await self._shut_down()
        failed = self._deleted_failed or any(
            r.state is TaskState.FAILED for r in self._records.values()
        )
        return Outcome(failed=failed)

    async def _start_up(self, *, once: bool) -> None:
        self._identity = await self._retry(lambda: read_identity(self._metadata), once=once)
        os_release = read_os_release(self._config.os_release)
        self._static = await self._retry(
            lambda: collect_metadata(self._metadata, version=__version__, os_release=os_release),
            once=once,
        )
        self._boot_time = read_boot_time(self._config.proc_stat)
        recorded_boot = self._store.fact("boot_time")
        rebooted = recorded_boot is not None and recorded_boot != format_time(self._boot_time)
        for record in self._store.load_all():
            self._records[record.task_id] = record
            if rebooted and not record.state.is_terminal:
                # RUNNING -> FAILED: the VM rebooted under the task; its processes are gone
                record.transition(
                    TaskState.FAILED,
                    at=datetime.now(UTC),
                    where=self._where(),
                    exit_code=ExitCode.VM_REBOOTED,
                    cause=events.VM_REBOOTED,
                )
                await self._store.save(record)
                log.warning("task %s: failed, the VM rebooted during it", record.task_id)
            elif not record.state.is_terminal:
                await self._resume(record)

        await self._store.set_fact("boot_time", format_time(self._boot_time))
        self._watch_preemption()

    async def _loop(self, *, once: bool) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            if not self._urgent.is_set() and await self._sleep(self._until_min_interval()):
                break
            self._urgent.clear()
            self._changed.clear()
            all_done_before = self._all_done()
            try:
                response = await self._report(self._state)
            except ControlPlaneError as error:
                delay = backoff.next_delay()
                log.warning("report failed (%s); retrying in %.1fs", error, delay.total_seconds())
                unreachable_for = datetime.now(UTC) - self._last_success
                if once and unreachable_for > self._config.unreachable_timeout:
                    raise Unreachable(str(error)) from error
                await self._sleep(delay.total_seconds())
                continue
            backoff.reset()
            self._last_success = datetime.now(UTC)
            self._state = AgentState.AGENT_RUNNING
            new_tasks = await self._reconcile(response)
            if once and all_done_before and not new_tasks and self._all_done():
                break
            if self._changed.is_set():
                continue
            await self._sleep(self._default_interval.total_seconds(), wake=self._changed)

    async def _report(self, state: AgentState) -> ReportAgentStateResponse:
        assert self._identity is not None
        request = self._request(state)
        try:
            response = await asyncio.to_thread(self._control.report, self._identity.parent, request)
        finally:
            # Counted from the answer, so the server never sees two reports closer than the
            # minimum, whatever the latency.
            self._last_report = asyncio.get_running_loop().time()
        if response.default_report_interval is not None:
            self._default_interval = max(response.default_report_interval, timedelta(0))
        if response.min_report_interval is not None:
            self._min_interval = max(response.min_report_interval, timedelta(0))
        return response

    def _request(self, state: AgentState) -> ReportAgentStateRequest:
        records = list(self._records.values())
        job_id, group_id = _job_and_group(records)
        return ReportAgentStateRequest(
            agent_info=AgentInfo(
                state=state,
                report_time=datetime.now(UTC),
                job_id=job_id,
                task_group_id=group_id,
                tasks=[r.info() for r in records],
            ),
            agent_timing_info=AgentTimingInfo(
                boot_time=self._boot_time,
                agent_startup_time=self._started,
                script_startup_time=self._config.script_startup_time,
            ),
            metadata=self._static,
        )

    # -- tasks --------------------------------------------------------------------------------

    async def _reconcile(self, response: ReportAgentStateResponse) -> int:
        """Apply what the server asked; returns how many tasks were new."""
        new = 0
        for raw in response.tasks:
            task = parse_agent_task(raw)
            if not task.task:
                log.error("response task without a name ignored: %.200s", raw)
                continue
            if task.intended_state is IntendedState.DELETED:
                await self._delete(task.task)
                continue
            if task.task not in self._records:
                new += 1
                await self._accept(task, raw)
            run = self._runs.get(task.task)
            if run is None:
                continue
            if task.intended_state is IntendedState.CANCELLED:
                run.cancel()
            if not isinstance(task, BadAgentTask):
                run.update_barrier(task.reached_barrier)
        return new

    async def _accept(self, task: AgentTask | BadAgentTask, raw: dict[str, Any]) -> None:
        """A task seen for the first time: persist it before anything runs, then start it."""
        record = TaskRecord(task_id=task.task, raw=dict(raw))
        self._records[task.task] = record
        plan = self._plan_or_fail(record, task)
        await self._store.save(record)
        if plan is not None:
            log.info("task %s: accepted", task.task)
            self._launch(record, plan, cancelled=task.intended_state is IntendedState.CANCELLED)

    async def _resume(self, record: TaskRecord) -> None:
        """A task an earlier agent left unfinished: carry on from its record."""
        log.info("task %s: resuming after an agent restart (%s)", record.task_id, record.state)
        task = parse_agent_task(record.raw)
        plan = self._plan_or_fail(record, task)
        if plan is None:  # a spec this agent no longer accepts: fail it, never leave it hanging
            await self._store.save(record)
            return
        self._launch(record, plan, cancelled=task.intended_state is IntendedState.CANCELLED)

    def _plan_or_fail(self, record: TaskRecord, task: AgentTask | BadAgentTask) -> TaskPlan | None:
        """The task's plan; or, for a spec that cannot run, None with the record FAILED (50000,
        every problem named). The caller persists."""
        problems = task.problems if isinstance(task, BadAgentTask) else []
        if isinstance(task, AgentTask):
            try:
                return make_plan(task)
            except PlanError as error:
                problems = error.problems
        # ASSIGNED -> FAILED: the spec cannot run
        record.transition(
            TaskState.FAILED,
            at=datetime.now(UTC),
            where=self._where(),
            exit_code=ExitCode.AGENT_FAILURE,
            cause=events.invalid_spec(problems),
        )
        log.error("task %s: invalid spec: %s", record.task_id, "; ".join(problems))
        self._changed.set()
        return None

    def _launch(self, record: TaskRecord, plan: TaskPlan, *, cancelled: bool) -> None:
        run = TaskRun(record, plan, self._context())
        if cancelled:
            run.cancel()
        self._runs[record.task_id] = run
        self._run_tasks[record.task_id] = asyncio.create_task(self._drive(run))

    async def _drive(self, run: TaskRun) -> None:
        try:
            await run.run()
        except Exception:  # a bug in one task's run must not take the agent down
            log.exception("task %s: the agent failed while running it", run.record.task_id)
            if not run.record.state.is_terminal:
                run.record.transition(
                    TaskState.FAILED,
                    at=datetime.now(UTC),
                    where=self._where(),
                    exit_code=ExitCode.AGENT_FAILURE,
                    cause="an internal error of the agent",
                )
                await self._store.save(run.record)
        self._changed.set()

    async def _delete(self, name: str) -> None:
        if name not in self._records:
            return
        run_task = self._run_tasks.pop(name, None)
        run = self._runs.pop(name, None)
        if run is not None and run_task is not None and not run_task.done():
            run.cancel()
            await run_task
        record = self._records.pop(name)
        self._deleted_failed |= record.state is TaskState.FAILED
        if any(r.container for r in record.runnables.values()):
            await self._remove_containers(name)
        await self._store.delete(name)
        # The server may assign the same name again (a retry): it starts from a clean folder.
        folder = task_dir(self._workdir, name)
        await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
        log.info("task %s: deleted", name)

    def _containers(self) -> ContainerEngine:
        """The Docker engine, made (and the docker SDK loaded) only when a task needs it."""
        if self._engine is None:
            from batch_agent.tasks.docker import ContainerEngine

            self._engine = ContainerEngine(self._config.docker_host)
        return self._engine

    def _context(self) -> RunContext:
        return RunContext(
            workdir=self._workdir,
            where=self._where(),
            base_env=base_environment(self._config.environ),
            persist=self._store.save,
            notify=self._changed.set,
            containers=self._containers,
            output=self._output.write,
            kill_grace=self._config.kill_grace,
        )

    # -- helpers ------------------------------------------------------------------------------

    def _until_min_interval(self) -> float:
        """Seconds to wait so that no report follows the last sooner than minReportInterval."""
        elapsed = asyncio.get_running_loop().time() - self._last_report
        return max(self._min_interval.total_seconds() - elapsed, 0.0)

    async def _remove_containers(self, name: str) -> None:
        from batch_agent.tasks.docker import EngineError

        try:
            await self._containers().remove_all({LABEL_TASK: name})
        except EngineError as error:
            log.warning("task %s: containers not removed: %s", name, error)

    def _all_done(self) -> bool:
        return all(r.state.is_terminal for r in self._records.values())

    def _where(self) -> str:
        assert self._identity is not None
        return f"zones/{self._identity.zone}/instances/{self._identity.instance_id}"

    async def _retry(self, call: Callable[[], T], *, once: bool) -> T:
        """Retry a blocking metadata read with backoff; --once gives up after the budget."""
        backoff = Backoff()
        began = datetime.now(UTC)
        while True:
            try:
                return await asyncio.to_thread(call)
            except MetadataError as error:
                if once and datetime.now(UTC) - began > self._config.unreachable_timeout:
                    raise Unreachable(f"metadata server: {error}") from error
                delay = backoff.next_delay()
                log.warning("metadata server: %s; retrying in %.1fs", error, delay.total_seconds())
                if await self._sleep(delay.total_seconds()):
                    raise Unreachable("stopped while waiting for the metadata server") from error

    async def _sleep(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        """Sleep, waking early on stop (returns True) or on `wake`."""
        waits = [asyncio.ensure_future(self._stop.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=max(seconds, 0), return_when="FIRST_COMPLETED")
        finally:
            for w in waits:
                w.cancel()
        return self._stop.is_set()

    def _watch_preemption(self) -> None:
        """Long-poll `instance/preempted` in a daemon thread (it must not delay exit)."""
        loop = asyncio.get_running_loop()

        def watch() -> None:
            while True:
                try:
                    value = self._metadata.wait_for_change(
                        "instance/preempted", timeout=timedelta(seconds=60)
                    )
                except MetadataError as error:
                    log.warning("preemption watch: %s", error)
                    time.sleep(5)
                    continue
                if value is not None and value.strip().upper() == "TRUE":
                    loop.call_soon_threadsafe(self._on_preempted)
                    return

        threading.Thread(target=watch, name="preemption-watch", daemon=True).start()

    def _on_preempted(self) -> None:
        log.warning("preemption notice received: this VM is going away")
        if self._static is not None:
            self._static = self._static.model_copy(
                update={"instance_preemption_notice_received": True}
            )
        for run in self._runs.values():
            run.preempted()
        self._urgent.set()
        self._changed.set()

    async def _shut_down(self) -> None:
        """Leave tasks running (they outlive the agent), send AGENT_STOPPED once, close."""
        for run_task in self._run_tasks.values():
            run_task.cancel()
        await asyncio.gather(*self._run_tasks.values(), return_exceptions=True)
        if self._identity is not None and self._state is not AgentState.AGENT_STARTING:
            try:
                await asyncio.sleep(min(self._until_min_interval(), 2.0))
                await asyncio.wait_for(self._report(AgentState.AGENT_STOPPED), timeout=5)
            except (ControlPlaneError, TimeoutError) as error:
                log.warning("last report (AGENT_STOPPED) failed: %s", error)
        self._control.close()
        if self._engine is not None:
            self._engine.close()
        self._store.close()


def _job_and_group(records: list[TaskRecord]) -> tuple[str | None, str | None]:
    """`projects/p/locations/l/jobs/J/taskGroups/G/tasks/0` -> (J, G) of the first task."""
    for record in records:
        parts = record.task_id.split("/")
        if "jobs" in parts and "taskGroups" in parts:
            job = parts[parts.index("jobs") + 1]
            group = parts[parts.index("taskGroups") + 1]
            return job, group
    return None, None
