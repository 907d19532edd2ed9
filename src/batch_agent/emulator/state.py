"""The emulated control plane's memory of one job: its tasks, where they run, what agents reported.

`JobState` applies valid reports, assigns pending tasks to VMs and builds the task list of each
response. It is not thread-safe: the caller holds one lock around every call. It must not do I/O
(other than the `log` callback), parse HTTP or validate JSON (reports reach it already valid).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batch_agent.emulator import job as jobs
from batch_agent.emulator.metadata import Site

log = logging.getLogger(__name__)

TERMINAL = frozenset({"SUCCEEDED", "FAILED"})
# A DELETED task is dropped once the agent stops reporting it, or after this many responses.
_DELETED_SENDS = 5
# Stands for "past every barrier" for finished tasks.
_PAST_ALL = 2**62


@dataclass(frozen=True)
class Report:
    """A valid report as received: when (time.monotonic()), from which VM, and its JSON body."""

    time: float
    vm: int
    body: dict[str, Any]


@dataclass
class TaskRecord:
    """One task: the AgentTask JSON we send (verbatim for `add_task`) and what was reported."""

    name: str
    sent: dict[str, Any]
    in_plan: bool
    vm: int | None = None
    intended: str | None = None  # CANCELLED / DELETED once decided, overriding `sent`
    state: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    runnable: int = 0
    deleted_sends: int = 0
    dropped: bool = False
    withdrawn: bool = False  # cancelled or deleted before it was ever assigned

    @property
    def is_finished(self) -> bool:
        """Reported SUCCEEDED/FAILED, or deleted: either way it no longer runs for the job."""
        return self.state in TERMINAL or self.withdrawn or self.intended == "DELETED"

    @property
    def group(self) -> str:
        return self.name.rsplit("/tasks/", 1)[0]


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
    ) -> None:
        self._site = site
        self._vms = vms
        self._auto_delete = auto_delete
        self._log = log
        self._plan = plan
        self.tasks: dict[str, TaskRecord] = {}
        self._pending: list[str] = []
        self._agent_states: dict[int, str] = {}
        for i, spec in enumerate(plan.specs if plan else ()):
            name = jobs.task_name(site.project_number, site.region, site.job_id, i)
            sent = {"task": name, "intendedState": "ASSIGNED", "spec": spec, "taskSource": "USER"}
            self.tasks[name] = TaskRecord(name=name, sent=sent, in_plan=True)
            self._pending.append(name)
        self.schedule()

    def add(self, raw: dict[str, Any], vm: int) -> str:
        """Assign an AgentTask JSON as it is (named if it has no `task`); returns its name."""
        sent = copy.deepcopy(raw)
        index = len(self.tasks)
        while "task" not in sent:
            name = jobs.task_name(
                self._site.project_number, self._site.region, self._site.job_id, index
            )
            if name not in self.tasks:
                sent["task"] = name
            index += 1
        name = str(sent["task"])
        sent.setdefault("intendedState", "ASSIGNED")
        self.tasks[name] = TaskRecord(name=name, sent=sent, in_plan=False, vm=vm)
        return name

    def cancel(self, name: str) -> None:
        """Send CANCELLED for the task from now on (unless it is being deleted)."""
        task = self.tasks[name]
        if name in self._pending:
            self._pending.remove(name)
            task.withdrawn = True
        if task.intended != "DELETED":
            task.intended = "CANCELLED"

    def delete(self, name: str) -> None:
        """Send DELETED for the task from now on."""
        task = self.tasks[name]
        if name in self._pending:
            self._pending.remove(name)
            task.withdrawn = True
        task.intended = "DELETED"

    def schedule(self) -> None:
        """Assign pending job tasks to VMs as parallelism and per-VM limits allow."""
        if self._plan is None or not self._pending:
            return
        active = [0] * self._vms
        for task in self.tasks.values():
            if task.in_plan and task.vm is not None and not task.is_finished:
                active[task.vm] += 1
        indices = list(range(len(self._pending)))
        cap = self._plan.per_vm_cap(self._vms)
        chosen = jobs.plan_assignments(indices, active, self._plan.parallelism, cap)
        for i, vm in chosen:
            self.tasks[self._pending[i]].vm = vm
        taken = {i for i, _ in chosen}
        self._pending = [name for i, name in enumerate(self._pending) if i not in taken]

    def record(self, vm: int, vm_name: str, body: dict[str, Any]) -> set[str]:
        """Apply a valid report from VM `vm`; returns the task names it mentioned."""
        info: dict[str, Any] = body.get("agentInfo", {})
        agent_state = info.get("state")
        if agent_state is not None and self._agent_states.get(vm) != agent_state:
            self._agent_states[vm] = agent_state
            self._log(f"{vm_name}: agent {agent_state}")
        mentioned: set[str] = set()
        for reported in info.get("tasks", []):
            name = reported.get("taskId", "")
            task = self.tasks.get(name)
            if task is None:
                log.warning("%s reported unknown task %r", vm_name, name)
                continue
            mentioned.add(name)
            task.runnable = int(reported.get("runnable", "0"))
            status = reported.get("taskStatus", {})
            task.events = copy.deepcopy(status.get("statusEvents", []))
            new = status.get("state")
            if new is not None and new != task.state:
                self._log_change(task, new)
                task.state = new
            if task.state in TERMINAL and self._auto_delete:
                task.intended = "DELETED"
        self.schedule()
        return mentioned

    def _log_change(self, task: TaskRecord, new: str) -> None:
        index = task.name.rsplit("/", 1)[-1]
        line = f"task {index} ({task.name}): {task.state or 'UNREPORTED'} -> {new}"
        if task.events and isinstance(task.events[-1], dict):
            description = task.events[-1].get("description")
            if description:
                line += f": {description}"
        self._log(line)

    def response_tasks(self, vm: int, mentioned: set[str]) -> list[dict[str, Any]]:
        """The AgentTasks for VM `vm`'s response; advances the DELETED bookkeeping."""
        out = []
        for task in self.tasks.values():
            if task.vm != vm or task.dropped:
                continue
            if task.intended == "DELETED":
                gone = task.deleted_sends >= 1 and task.name not in mentioned
                if gone or task.deleted_sends >= _DELETED_SENDS:
                    task.dropped = True
                    continue
                task.deleted_sends += 1
            sent = copy.deepcopy(task.sent)
            if task.intended is not None:
                sent["intendedState"] = task.intended
            if "reachedBarrier" not in task.sent:
                sent["reachedBarrier"] = str(self._reached_barrier(task))
            out.append(sent)
        return out

    def _reached_barrier(self, task: TaskRecord) -> int:
        barriers = jobs.barrier_indices(task.sent.get("spec"))
        if not barriers:
            return 0
        group = [t for t in self.tasks.values() if t.group == task.group]
        return jobs.reached_barrier(
            barriers, (_PAST_ALL if t.is_finished else t.runnable for t in group)
        )

    def is_deleted(self, name: str) -> bool:
        task = self.tasks[name]
        return task.deleted_sends > 0 or (task.withdrawn and task.intended == "DELETED")

    @property
    def done(self) -> bool:
        return bool(self.tasks) and all(t.is_finished for t in self.tasks.values())

    @property
    def failed(self) -> bool:
        return any(
            t.state == "FAILED" or (t.withdrawn and t.intended == "CANCELLED")
            for t in self.tasks.values()
        )
