"""Task names as the Batch server sends them: the one parser of their parts.

A task's name (`AgentTask.task`) is echoed back exactly; what the agent derives from it (the
task index for BATCH_TASK_INDEX, the retry attempt, the job and group for the report) comes
from here. Two forms are known:

- `projects/P/locations/L/jobs/JOB/taskGroups/GROUP/tasks/INDEX` (the resource name);
- `task/JOB_UID-GROUP-INDEX/RETRIES/0` (the form Google's troubleshooting guide shows in agent
  logs, e.g. `task/j-3f2a9c1e-...-group0-2/1/0`: index 2, retry attempt 1).

Anything else is opaque: no part is known. Pure: no I/O, bounded cost for any input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MAX_DIGITS = 9  # an index or attempt beyond this is not a number Batch sends
_RESOURCE = re.compile(
    r"^projects/[^/]+/locations/[^/]+/jobs/(?P<job>[^/]+)/taskGroups/(?P<group>[^/]+)"
    rf"/tasks/(?P<index>\d{{1,{_MAX_DIGITS}}})$"
)
_AGENT_FORM = re.compile(
    rf"^task/(?P<job>[^/]+)-(?P<group>[^-/]+)-(?P<index>\d{{1,{_MAX_DIGITS}}})"
    rf"/(?P<attempt>\d{{1,{_MAX_DIGITS}}})/\d{{1,{_MAX_DIGITS}}}$"
)


@dataclass(frozen=True)
class TaskName:
    """The parts of a task's name that are known; None where its form does not say."""

    job: str | None = None  # the job id (resource form) or job uid (agent form)
    group: str | None = None
    index: int | None = None
    attempt: int | None = None


def parse_task_name(name: str) -> TaskName:
    """The known parts of `name`; an unknown form gives an empty TaskName, never an error."""
    if len(name) > 1024:
        return TaskName()
    match = _RESOURCE.match(name) or _AGENT_FORM.match(name)
    if match is None:
        return TaskName()
    parts = match.groupdict()
    attempt = parts.get("attempt")
    return TaskName(
        job=parts["job"],
        group=parts["group"],
        index=int(parts["index"]),
        attempt=int(attempt) if attempt is not None else None,
    )
