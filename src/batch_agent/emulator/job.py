"""Batch job configs as the emulator sees them: parsing, task expansion, scheduling, barriers.

Everything here is pure (no I/O, no clocks, no locks) so it can be table-tested. A job config is
the JSON given to `gcloud batch jobs submit --config`; snake_case keys are accepted and turned into
the API's camelCase, guided by the discovery document so that user map keys (environment
variables, labels) are left alone. This module must not know about HTTP or VMs' metadata.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from batch_agent import discovery
from batch_agent.emulator import checks

_SNAKE = re.compile(r"_([a-z0-9])")


class JobConfigError(ValueError):
    """A job config Batch would refuse; `problems` are "path: reason" strings."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("job config: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class JobPlan:
    """One task group of a job, expanded: `specs[i]` is the TaskSpec JSON of task i.

    `in_order`: schedulingPolicy IN_ORDER (one task at a time, by index). `policies` are the
    task spec's lifecyclePolicies. `cloud_logging`: logsPolicy CLOUD_LOGGING, so each task is
    sent with a `loggingOption` carrying `log_labels` (the job's `labels`, which Batch applies
    "to the job and any Cloud Logging LogEntry that it generates");
    `batch_monitored_resource`: the answers' `useBatchMonitoredResource` (true unless
    `cloudLoggingOption.useGenericTaskMonitoredResource`). `not_applied` names fields a local
    run accepts but ignores.
    """

    specs: tuple[dict[str, Any], ...]
    parallelism: int
    task_count_per_node: int | None
    in_order: bool = False
    max_retry_count: int = 0
    policies: tuple[dict[str, Any], ...] = ()
    require_hosts_file: bool = False
    logs_path: str | None = None
    cloud_logging: bool = False
    log_labels: tuple[tuple[str, str], ...] = ()
    batch_monitored_resource: bool = True
    not_applied: tuple[str, ...] = ()

    @property
    def task_count(self) -> int:
        return len(self.specs)

    def per_vm_cap(self, vms: int) -> int:
        """Most tasks of this job one VM runs at once (our choice when taskCountPerNode is unset:
        spread the tasks evenly over the VMs)."""
        if self.task_count_per_node is not None:
            return self.task_count_per_node
        return max(1, math.ceil(self.task_count / max(vms, 1)))


def camelize(value: Any, schema: str = "Job") -> Any:
    """A deep copy of `value` with snake_case field names made camelCase and plain integers in
    int64 fields made strings (as users write `"taskCount": 3`); map keys stay as they are."""
    return _camelize(value, {"$ref": schema})


def _camelize(value: Any, node: dict[str, Any] | None) -> Any:
    if node is not None and "$ref" in node:
        node = discovery.document()["schemas"][node["$ref"]]
    if isinstance(value, dict):
        properties: dict[str, Any] = {} if node is None else node.get("properties", {})
        extra = None if node is None else node.get("additionalProperties")
        if extra is not None and not properties:
            return {key: _camelize(item, extra) for key, item in value.items()}
        out = {}
        for key, item in value.items():
            name = _SNAKE.sub(lambda m: m[1].upper(), key)
            out[name] = _camelize(item, properties.get(name))
        return out
    if isinstance(value, list):
        items = None if node is None else node.get("items")
        return [_camelize(item, items) for item in value]
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and node is not None and node.get("format") in ("int64", "uint64"):
        return str(value)
    return copy.deepcopy(value)


def load_job(config: object, *, strict: bool = False) -> JobPlan:
    """Parse a job config into a plan. Raises JobConfigError (a ValueError) naming every problem.

    Only one task group is supported (as in Batch). `taskEnvironments`, when given, sets the task
    count and its variables are merged over `taskSpec.environment.variables` for task i.
    `strict` also refuses what Batch refuses beyond the schema (`checks.problems`); without it
    a runnable the agent must refuse (a test of the agent) still reaches the agent.
    """
    if not isinstance(config, dict):
        raise JobConfigError([f"<root>: {type(config).__name__} is not a JSON object"])
    job = camelize(config)
    errors = discovery.validate("Job", job)
    if not errors and strict:
        errors = checks.problems(job)
    if errors:
        raise JobConfigError(errors)
    groups = job.get("taskGroups", [])
    if len(groups) != 1:
        raise JobConfigError([f"taskGroups: needs exactly one task group, got {len(groups)}"])
    group = groups[0]
    spec: dict[str, Any] = group.get("taskSpec", {})
    environments: list[dict[str, Any]] = group.get("taskEnvironments", [])
    count = len(environments) or int(group.get("taskCount", "1"))
    if count < 1:
        raise JobConfigError([f"taskGroups[0].taskCount: {count} is not at least 1"])
    specs = []
    for i in range(count):
        task_spec = copy.deepcopy(spec)
        if environments:
            env = task_spec.setdefault("environment", {})
            env["variables"] = {
                **env.get("variables", {}),
                **environments[i].get("variables", {}),
            }
        specs.append(task_spec)
    in_order = group.get("schedulingPolicy") == "IN_ORDER"
    parallelism = 1 if in_order else int(group.get("parallelism", "0")) or count
    per_node = int(group["taskCountPerNode"]) if "taskCountPerNode" in group else None
    if per_node is not None and per_node < 1:
        raise JobConfigError([f"taskGroups[0].taskCountPerNode: {per_node} is not at least 1"])
    logs = job.get("logsPolicy", {})
    generic = bool(logs.get("cloudLoggingOption", {}).get("useGenericTaskMonitoredResource"))
    return JobPlan(
        specs=tuple(specs),
        parallelism=parallelism,
        task_count_per_node=per_node,
        in_order=in_order,
        max_retry_count=int(spec.get("maxRetryCount", 0)),
        policies=tuple(spec.get("lifecyclePolicies", ())),
        require_hosts_file=bool(group.get("requireHostsFile", False)),
        logs_path=logs.get("logsPath") if logs.get("destination") == "PATH" else None,
        cloud_logging=logs.get("destination") == "CLOUD_LOGGING",
        log_labels=tuple(sorted(job.get("labels", {}).items())),
        batch_monitored_resource=not generic,
        not_applied=tuple(checks.not_applied(job)),
    )


def plan_assignments(
    pending: Sequence[int], active_per_vm: Sequence[int], parallelism: int, per_vm: int
) -> list[tuple[int, int]]:
    """Which pending tasks start now and where: `(task, vm)` pairs, tasks in the given order.

    `active_per_vm[v]` counts the job's tasks assigned to VM v and not yet finished. At most
    `parallelism` run in the job and `per_vm` on a VM; each task goes to the least busy VM
    (lowest index on ties).
    """
    active = list(active_per_vm)
    room = parallelism - sum(active)
    assigned: list[tuple[int, int]] = []
    for task in pending:
        if room <= 0 or not active:
            break
        vm = min(range(len(active)), key=lambda v: (active[v], v))
        if active[vm] >= per_vm:
            break
        active[vm] += 1
        room -= 1
        assigned.append((task, vm))
    return assigned


def barrier_indices(spec: object) -> frozenset[int]:
    """1-based indices of the runnables of a TaskSpec JSON that are barriers; tolerant of junk."""
    runnables = spec.get("runnables") if isinstance(spec, dict) else None
    if not isinstance(runnables, list):
        return frozenset()
    return frozenset(
        i for i, r in enumerate(runnables, start=1) if isinstance(r, dict) and "barrier" in r
    )


def reached_barrier(barriers: Collection[int], runnables: Iterable[int]) -> int:
    """The highest barrier index k that every task of the group has reached (runnable >= k).

    `runnables` holds each task's last reported runnable index (callers pass a huge value for
    finished tasks so that they do not hold the others back, our choice). 0 if none reached.
    """
    lowest = min(runnables, default=0)
    return max((k for k in barriers if k <= lowest), default=0)
