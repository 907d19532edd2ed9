"""The emulated control plane's memory of one job: its tasks, where they run, what agents reported.

`JobState` applies valid reports, assigns pending tasks to VMs, retries failed attempts as
`maxRetryCount`/`lifecyclePolicies` say, moves the job through its states and hands each response
its VM's tasks (`dispatch` writes them). Tasks are kept by their resource name; each attempt is
sent under a name of its own (`tasknames`), and `task` finds a task by any of them. Every state
change of the job or a task is written to `changes`, so that a watcher misses none. It is not
thread-safe: the caller holds one lock around every call. It must not do I/O (other than the `log`
callback), parse HTTP or validate JSON (reports reach it already valid).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

from batch_agent.emulator import dispatch, service, tasknames
from batch_agent.emulator import job as jobs
from batch_agent.emulator.changes import ChangeLog, last_description
from batch_agent.emulator.metadata import Site
from batch_agent.emulator.records import TERMINAL, ServerTask
from batch_agent.emulator.roster import Roster

log = logging.getLogger(__name__)


class JobState:
    """Tasks of one job (from a config and/or added raw), their VMs and their reported status."""

    def __init__(
        self,
        plan: jobs.JobPlan | None,
        site: Site,
        vms: int,
        *,
        auto_delete: bool,
        log: Callable[[str], None],
        hosts_path: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._site = site
        self._vms = vms
        self._auto_delete = auto_delete
        self._log = log
        self._plan = plan
        self._hosts_path = hosts_path
        self._clock = clock
        self.job_uid = tasknames.new_job_uid()
        self.tasks: dict[str, ServerTask] = {}  # by resource name
        self._roster = Roster(self.tasks)  # told of every task added and every VM given
        self._issued: dict[str, str] = {}  # every name a task was sent under -> its resource
        self.changes = ChangeLog(clock)
        self._pending: list[str] = []
        self._agent_states: dict[int, str] = {}
        self.job_state: str | None = None
        self._cancelling = self._scheduled = self._ran = False
        self._failed_task: tuple[int, str] | None = None
        if plan is None:
            return
        self.job_state = service.QUEUED
        self.changes.job(None, service.QUEUED)
        for i in range(plan.task_count):
            resource = tasknames.resource_name(site.project_number, site.region, site.job_id, i)
            name = tasknames.agent_name(self.job_uid, i, 0)
            sent = self._agent_task(name, i, 0)
            task = ServerTask(name=name, resource=resource, sent=sent, in_plan=True, index=i)
            self.tasks[resource] = task
            self._roster.added(task)
            self._issued[name] = resource
            self._pending.append(resource)
            self.changes.task(task, None)
        self.schedule()

    @property
    def job_name(self) -> str:
        site = self._site
        return f"projects/{site.project_number}/locations/{site.region}/jobs/{site.job_id}"

    def _agent_task(self, name: str, index: int, attempt: int) -> dict[str, Any]:
        assert self._plan is not None
        spec = copy.deepcopy(self._plan.specs[index])
        variables = spec.setdefault("environment", {}).setdefault("variables", {})
        variables.update(service.batch_variables(self._plan.task_count, attempt, self._hosts_path))
        task = {"task": name, "intendedState": "ASSIGNED", "spec": spec, "taskSource": "USER"}
        if self._plan.cloud_logging:
            # [I] AgentTaskSpec.loggingOption: "Labels to be added to the log entry"; the job's
            # labels are documented to label its entries. Sent with CLOUD_LOGGING only.
            labels = dict(self._plan.log_labels)
            task["agentTaskSpec"] = {"loggingOption": {"labels": labels} if labels else {}}
        return task

    def task(self, name: str) -> ServerTask:
        """The task with this resource name or sent under this name (any attempt's); KeyError
        if none."""
        return self.tasks[self._issued.get(name, name)]

    # -- steering ------------------------------------------------------------------------------

    def add(self, raw: dict[str, Any], vm: int) -> str:
        """Assign an AgentTask JSON as it is (named if it has no `task`); returns its name."""
        sent = copy.deepcopy(raw)
        index = len(self.tasks)
        while "task" not in sent:
            name = tasknames.agent_name(self.job_uid, index, 0)
            if name not in self._issued and name not in self.tasks:
                sent["task"] = name
            index += 1
        name = str(sent["task"])
        sent.setdefault("intendedState", "ASSIGNED")
        parts = tasknames.parse(name)
        index = -1 if parts is None else parts.index
        task = ServerTask(name=name, resource=name, sent=sent, in_plan=False, vm=vm, index=index)
        self.tasks[name] = task
        self._roster.added(task)
        self._issued[name] = name
        self.changes.task(task, None)
        return name

    def cancel(self, name: str) -> None:
        """Send CANCELLED for the task from now on (unless it is being deleted); no retry."""
        task = self.task(name)
        before = task.phase
        self._withdraw(task)
        if task.retrying:
            task.retrying = False  # its last attempt's FAILED stands
            task.ended = self._clock()
        if task.intended != "DELETED":
            task.intended = "CANCELLED"
        if task.phase != before:
            self.changes.task(task, before)
        self._advance_job()

    def cancel_job(self) -> None:
        """Cancel every unfinished task: pending ones never start, running ones are stopped."""
        self._cancelling = True
        for task in list(self.tasks.values()):
            if not task.is_finished:
                self.cancel(task.resource)
        self._advance_job()

    def delete(self, name: str) -> None:
        """Send DELETED for the task from now on."""
        task = self.task(name)
        before = task.phase
        self._withdraw(task)
        task.intended = "DELETED"
        if task.phase != before:
            self.changes.task(task, before)

    def _withdraw(self, task: ServerTask) -> None:
        """A task not yet assigned to a VM never will be."""
        if task.resource in self._pending:
            self._pending.remove(task.resource)
            task.withdrawn = True

    def schedule(self) -> None:
        """Assign pending job tasks to VMs as parallelism and per-VM limits allow."""
        if self._plan is None or not self._pending:
            return
        active = [0] * self._vms
        for task in self._roster.on_vms():
            if task.in_plan and task.vm is not None and not task.is_finished:
                active[task.vm] += 1
        indices = list(range(len(self._pending)))
        cap = self._plan.per_vm_cap(self._vms)
        chosen = jobs.plan_assignments(indices, active, self._plan.parallelism, cap)
        for i, vm in chosen:
            task = self.tasks[self._pending[i]]
            task.vm = vm
            self._roster.placed(task)
            self.changes.task(task, "PENDING")  # PENDING -> ASSIGNED: a VM takes it
        taken = {i for i, _ in chosen}
        self._pending = [name for i, name in enumerate(self._pending) if i not in taken]

    # -- reports -------------------------------------------------------------------------------

    def record(self, vm: int, vm_name: str, body: dict[str, Any]) -> set[str]:
        """Apply a valid report from VM `vm`; returns the task names it mentioned."""
        info: dict[str, Any] = body.get("agentInfo", {})
        agent_state = info.get("state")
        if agent_state is not None and self._agent_states.get(vm) != agent_state:
            self._agent_states[vm] = agent_state
            self._log(f"{vm_name}: agent {agent_state}")
        self._scheduled = True
        mentioned: set[str] = set()
        for reported in info.get("tasks", []):
            name = reported.get("taskId", "")
            task = self.tasks.get(self._issued.get(name, ""))
            if task is None:
                log.warning("%s reported unknown task %r", vm_name, name)
                continue
            if task.name != name:
                continue  # an earlier attempt, already forgotten by the server
            mentioned.add(name)
            if task.retrying or task.dropped:
                continue  # an attempt already judged; its successor is a new task
            task.runnable = int(reported.get("runnable", "0"))
            status = reported.get("taskStatus", {})
            # Shared with the report kept in `BatchApi.reports`: neither is ever changed (a
            # deep copy per task per report was most of this method's time).
            task.events = status.get("statusEvents", [])
            new = status.get("state")
            if new is not None and new != task.state:
                self._apply(task, new)
            if task.state in TERMINAL and self._auto_delete:
                task.intended = "DELETED"
        self.schedule()
        self._advance_job()
        return mentioned

    def _apply(self, task: ServerTask, new: str) -> None:
        """The agent reported a new state for the task's current attempt."""
        self._log_change(task, new)
        before, now = task.phase, self._clock()
        task.state = new
        began, ended = service.run_times(task.events)
        if new != "ASSIGNED" and task.attempt_started is None:
            task.attempt_started = min(began or now, now)
            task.started = task.started or task.attempt_started
        if new not in TERMINAL:
            if new != before:  # an agent's first ASSIGNED is no change from the server's
                self.changes.task(task, before)
            return
        self._ran = True
        # A SUCCEEDED event carries no taskExecution; TaskExecution.exitCode: "If the task
        # succeeded, the exit code will be 0."
        task.exit_code = 0 if new == "SUCCEEDED" else service.exit_code_of(task.events)
        plan = self._plan
        if (
            new == "FAILED"
            and task.in_plan
            and plan is not None
            and task.intended != "CANCELLED"
            and not self._cancelling
            and service.should_retry(
                task.exit_code, task.attempt, plan.max_retry_count, plan.policies
            )
        ):
            # RUNNING -> FAILED, retried: the agent must forget this attempt before the next
            task.retrying, task.intended = True, "DELETED"
            why = service.retry_event(task.attempt, plan.max_retry_count, task.exit_code)
            self.changes.task(task, before, retrying=True, retryDescription=why)
            return
        task.ended = min(ended or now, now)
        if new == "FAILED" and self._failed_task is None:
            self._failed_task = (task.index, last_description(task))
        self.changes.task(task, before)

    def response_tasks(self, vm: int, mentioned: set[str]) -> list[dict[str, Any]]:
        """The AgentTasks for VM `vm`'s response; advances the DELETED bookkeeping and starts
        the next attempt of a retried task once its agent has forgotten the last one."""
        retried = dispatch.drop_forgotten(self._roster.on_vm(vm), vm, mentioned)
        for task in retried:
            self._requeue(task)
        if retried:
            self.schedule()
        return dispatch.agent_tasks(self._roster.on_vm(vm), vm, every=self.tasks.values())

    def _requeue(self, task: ServerTask) -> None:
        """FAILED -> PENDING: a new attempt, BATCH_TASK_RETRY_ATTEMPT + 1, under a new name
        (RETRIES + 1 in it)."""
        before = task.phase
        task.attempt += 1
        task.name = tasknames.agent_name(self.job_uid, task.index, task.attempt)
        self._issued[task.name] = task.resource
        task.sent = self._agent_task(task.name, task.index, task.attempt)
        task.vm = task.intended = task.state = task.attempt_started = None
        task.retrying = task.dropped = False
        task.events, task.runnable, task.deleted_sends = [], 0, 0
        position = sum(1 for key in self._pending if self.tasks[key].index < task.index)
        self._pending.insert(position, task.resource)
        self.changes.task(task, before)

    # -- the job -------------------------------------------------------------------------------

    def _advance_job(self) -> None:
        if self.job_state is None:
            return
        done = self.done
        steps = service.job_transitions(
            self.job_state,
            scheduled=self._scheduled,
            running=self._ran or any(t.state == "RUNNING" for t in self.tasks.values()),
            done=done,
            failed=done and self.failed,  # only a finished job's outcome needs it: a scan less
            cancelling=self._cancelling,
        )
        for new in steps:
            old, self.job_state = self.job_state, new
            failed_task = self._failed_task if new == service.FAILED else None
            description = service.job_event(self.job_name, old, new, failed_task=failed_task)
            self.changes.job(old, new, description)
            self._log(f"job {self._site.job_id}: {old} -> {new}")

    def _log_change(self, task: ServerTask, new: str) -> None:
        line = f"task {task.index} ({task.name}): {task.state or 'UNREPORTED'} -> {new}"
        if description := last_description(task):
            line += f": {description}"
        self._log(line)

    def is_busy(self, vm: int) -> bool:
        """Whether VM `vm` has a task whose state will still change (assigned, running, or
        finished but not yet forgotten by its agent)."""
        return any(
            t.state not in TERMINAL or t.intended == "DELETED" for t in self._roster.on_vm(vm)
        )

    def is_deleted(self, name: str) -> bool:
        task = self.task(name)
        return task.deleted_sends > 0 or (task.withdrawn and task.intended == "DELETED")

    @property
    def done(self) -> bool:
        return self._roster.all_finished()

    @property
    def failed(self) -> bool:
        return any(
            (t.state == "FAILED" and not t.retrying) or (t.withdrawn and t.intended == "CANCELLED")
            for t in self.tasks.values()
        )
