"""Task names as the emulated server issues them, and the reading of their parts.

Batch sends an agent `task/JOB_UID-GROUP-INDEX/RETRIES/0` (the form Google's troubleshooting
guide shows in agent logs): a retry is the same index with RETRIES + 1, so each attempt has a
name of its own. The API's Task resource name (`projects/P/locations/L/jobs/JOB/taskGroups/
GROUP/tasks/INDEX`) stays the same across attempts. The agent has its own parser
(`batch_agent.names`); this one is the server's, since the emulator imports no agent code (a test
checks the two agree). Pure: no I/O, no state.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

GROUP = "group0"  # the emulator's one task group, as Batch names a job's first group
_ISSUED = re.compile(
    r"^task/(?P<job>[^/]+)-(?P<group>[^-/]+)-(?P<index>\d{1,9})/(?P<attempt>\d{1,9})/0$"
)
_RESOURCE = re.compile(
    r"^projects/[^/]+/locations/[^/]+/jobs/(?P<job>[^/]+)/taskGroups/(?P<group>[^/]+)"
    r"/tasks/(?P<index>\d{1,9})$"
)


@dataclass(frozen=True)
class Parts:
    """What a name says: the job (uid or id), its group, the task index and the attempt (None
    in a resource name, which does not change with the attempt)."""

    job: str
    group: str
    index: int
    attempt: int | None


def new_job_uid() -> str:
    """A job's system-generated uid (`Job.uid`), in Batch's shape: `j-` and a UUID."""
    return f"j-{uuid.uuid4()}"


def agent_name(job_uid: str, index: int, attempt: int, group: str = GROUP) -> str:
    """The name of attempt `attempt` (0 first) of task `index`, as sent in `AgentTask.task`."""
    return f"task/{job_uid}-{group}-{index}/{attempt}/0"


def resource_name(project_number: str, region: str, job_id: str, index: int) -> str:
    """The Task's resource name in the Batch API (the same for every attempt)."""
    job = f"projects/{project_number}/locations/{region}/jobs/{job_id}"
    return f"{job}/taskGroups/{GROUP}/tasks/{index}"


def parse(name: str) -> Parts | None:
    """The parts of an issued or a resource name; None for any other name."""
    match = _ISSUED.match(name) or _RESOURCE.match(name)
    if match is None:
        return None
    attempt = match.groupdict().get("attempt")
    return Parts(
        job=match["job"],
        group=match["group"],
        index=int(match["index"]),
        attempt=int(attempt) if attempt is not None else None,
    )
