"""One task's side of Cloud Logging: where its entries go, and its durable shipping state.

`TaskLog` wraps a task's record: whether its output is shipped at all (the `--cloud-logging`
mode and the task's `loggingOption`), its log (`batch_task_logs` for USER tasks,
`batch_agent_logs` for BATCH_INTERNAL ones), labels and monitored resource, and the state kept
in `record.cloud_log` (JSON, saved with the record): `offsets` (per `K.stream`, every byte
before it written to Cloud Logging), `pending` (the segments of the write under way, saved
before it is sent, so that a restarted agent sends the very same entries again) and `denied`
(the 403 warning event was given). Pure apart from the record it is handed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from batch_agent.cloudlog.entries import Destination, Segment, task_key
from batch_agent.names import parse_task_name
from batch_agent.tasks.record import TaskRecord

# The task side (its models, plans, hooks) is imported after the first report: the writer is
# made before the agent's first report, which must not wait for it.
if TYPE_CHECKING:
    from batch_agent.wire import AgentTask

TASK_LOGS = "batch_task_logs"
AGENT_LOGS = "batch_agent_logs"
STREAMS = ("stdout", "stderr")


class Site(NamedTuple):  # a named tuple: a frozen dataclass costs ~1.5 ms of start-up
    """What the entries say about this VM and project."""

    project_id: str  # logName's PROJECT_ID (the metadata's project-id, else the number)
    zone: str
    region: str


class TaskLog:
    def __init__(self, record: TaskRecord, mode: str) -> None:
        self.record = record
        self._mode = mode

    @functools.cached_property
    def _task(self) -> AgentTask | None:
        """The task, parsed at the first question about it: a task deleted before the writer
        looked at it, with no output left, is forgotten without (~80 us a task)."""
        from batch_agent.wire import AgentTask, parse_agent_task

        task = parse_agent_task(self.record.raw)
        return task if isinstance(task, AgentTask) else None

    @functools.cached_property
    def enabled(self) -> bool:
        """Whether its output is shipped at all."""
        return self._task is not None and _wanted(self._task, self._mode)

    @functools.cached_property
    def needs_secrets(self) -> bool:
        """Whether its lines must wait for its secrets' values (to mask them); asked only of a
        task whose output is shipped (its plan made again: ~35 us, for every task otherwise)."""
        return self._task is not None and _needs_secrets(self._task)

    @property
    def state(self) -> dict[str, Any]:
        return self.record.cloud_log

    def offset(self, k: int, stream: str) -> int:
        offsets: dict[str, int] = self.state.get("offsets", {})
        return int(offsets.get(f"{k}.{stream}", 0))

    def pending(self) -> list[Segment]:
        return [Segment.from_json(s) for s in self.state.get("pending", [])]

    def set_pending(self, segments: list[Segment]) -> None:
        self.state["pending"] = [s.to_json() for s in segments]

    def written(self, segments: list[Segment]) -> None:
        """These segments are in Cloud Logging: move the offsets past them."""
        offsets = self.state.setdefault("offsets", {})
        for segment in segments:
            key = f"{segment.k}.{segment.stream}"
            offsets[key] = max(int(offsets.get(key, 0)), segment.end)
        self.state["pending"] = []

    def restart_stream(self, k: int, stream: str) -> None:
        """The file is shorter than the offset (truncated): ship it again from its start."""
        self.state.setdefault("offsets", {})[f"{k}.{stream}"] = 0

    def destination(self, site: Site, batch_resource: bool) -> Destination:
        return _destination(
            self.record.task_id, self._log_id(), self._user_labels(), site, batch_resource
        )

    def _log_id(self) -> str:
        internal = self._task is not None and self._task.task_source == "BATCH_INTERNAL"
        return AGENT_LOGS if internal else TASK_LOGS

    def _user_labels(self) -> tuple[tuple[str, str], ...]:
        spec = self._task.agent_task_spec if self._task is not None else None
        option = spec.logging_option if spec is not None else None
        return tuple(sorted(option.labels.items())) if option is not None else ()


def _wanted(task: AgentTask, mode: str) -> bool:
    if mode == "never":
        return False
    if mode in ("always", "tasks"):
        return True
    spec = task.agent_task_spec
    return spec is not None and spec.logging_option is not None


def _needs_secrets(task: AgentTask) -> bool:
    from batch_agent.tasks.hooks import needs_secrets
    from batch_agent.tasks.plan import PlanError, make_plan

    try:
        return needs_secrets(make_plan(task))
    except PlanError:
        return False  # it never runs: no output


@functools.lru_cache(maxsize=4096)
def _destination(
    name: str,
    log_id: str,
    user_labels: tuple[tuple[str, str], ...],
    site: Site,
    batch_resource: bool,
) -> Destination:
    parts = parse_task_name(name)
    labels: dict[str, str] = dict(user_labels)
    if parts.job is not None:
        labels["job_uid"] = parts.job
        labels["task_id"] = f"{parts.job}-{parts.group}-{parts.index}"
    job = parts.job or ""
    resource: Mapping[str, Any]
    if batch_resource:
        resource = {
            "type": "batch.googleapis.com/Job",
            "labels": {
                "resource_container": site.project_id,
                "location": site.region,
                "job_id": job,
            },
        }
    else:
        resource = {
            "type": "generic_task",
            "labels": {
                "project_id": site.project_id,
                "location": site.zone,
                "namespace": "batch",
                "job": job,
                "task_id": labels.get("task_id", name),
            },
        }
    return Destination(
        log_name=f"projects/{site.project_id}/logs/{log_id}",
        resource=resource,
        labels=labels,
        key=task_key(name),
    )
