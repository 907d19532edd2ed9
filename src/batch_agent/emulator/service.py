"""Rules of the Batch service that the emulator plays, as pure functions.

Retry decisions (`maxRetryCount`, `lifecyclePolicies`), the job's state machine and its event
wording, the hosts file and the `BATCH_*` variables the server hands to each task. No I/O, no
clocks, no locks: everything here is table-tested. Must not know about HTTP, VMs or agents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

# Job states (JobStatus.state), in the order a job passes through them.
QUEUED, SCHEDULED, RUNNING = "QUEUED", "SCHEDULED", "RUNNING"
SUCCEEDED, FAILED = "SUCCEEDED", "FAILED"
CANCELLING, CANCELLED = "CANCELLATION_IN_PROGRESS", "CANCELLED"
JOB_FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
_PROGRESS = (QUEUED, SCHEDULED, RUNNING)


def should_retry(
    exit_code: int | None,
    retries_done: int,
    max_retry_count: int,
    policies: Sequence[Mapping[str, Any]],
) -> bool:
    """Whether a task attempt that FAILED with `exit_code` gets another attempt.

    Batch's rules (TaskSpec.maxRetryCount, LifecyclePolicy.action): never beyond
    `max_retry_count` retries; with a `RETRY_TASK` policy only matching exit codes are retried;
    with `FAIL_TASK` a matching exit code fails the task at once and others are retried; without
    a policy every failure is retried. An unknown exit code (None) matches no policy.
    """
    if retries_done >= max_retry_count:
        return False
    for policy in policies:
        condition = policy.get("actionCondition") or {}
        matches = exit_code is not None and exit_code in condition.get("exitCodes", [])
        if policy.get("action") == "RETRY_TASK":
            return matches
        if policy.get("action") == "FAIL_TASK":
            return not matches
    return True


def exit_code_of(events: Iterable[Mapping[str, Any]]) -> int | None:
    """The exit code of the last status event that carries `taskExecution.exitCode`, else None."""
    code = None
    for event in events:
        execution = event.get("taskExecution") if isinstance(event, Mapping) else None
        if isinstance(execution, Mapping) and isinstance(execution.get("exitCode"), int):
            code = execution["exitCode"]
    return code


def run_times(events: Iterable[Mapping[str, Any]]) -> tuple[float | None, float | None]:
    """When the attempt started (its first non-ASSIGNED event) and ended (its SUCCEEDED/FAILED
    event), as POSIX times read from the events' `eventTime`; None where unknown."""
    started = ended = None
    for event in events:
        when = _posix(event.get("eventTime")) if isinstance(event, Mapping) else None
        state = event.get("taskState") if isinstance(event, Mapping) else None
        if when is None or state in (None, "ASSIGNED", "STATE_UNSPECIFIED"):
            continue
        started = when if started is None else started
        if state in ("SUCCEEDED", "FAILED"):
            ended = when
    return started, ended


def _posix(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def job_transitions(
    current: str,
    *,
    scheduled: bool,
    running: bool,
    done: bool,
    failed: bool,
    cancelling: bool,
) -> list[str]:
    """The job states to pass through, in order, from `current` given what is now true.

    `scheduled`: a VM took the job's tasks; `running`: a task ran (or finished); `done`: every
    task is finished; `failed`: a task failed for good; `cancelling`: the job was cancelled.
    A job never skips a progress state (QUEUED -> SCHEDULED -> RUNNING) on its way to SUCCEEDED
    or FAILED; a cancelled job goes to CANCELLATION_IN_PROGRESS, then CANCELLED once done.
    Final states are never left.
    """
    if current in JOB_FINAL:
        return []
    if cancelling:
        target = CANCELLED if done else CANCELLING
        return [] if target == current else [target]
    if current == CANCELLING:
        return []
    if done:
        target, through = (FAILED if failed else SUCCEEDED), RUNNING
    elif running:
        target = through = RUNNING
    elif scheduled:
        target = through = SCHEDULED
    else:
        return []
    start = _PROGRESS.index(current) + 1
    steps = list(_PROGRESS[start : _PROGRESS.index(through) + 1])
    return steps if target in _PROGRESS else [*steps, target]


def job_event(job: str, old: str, new: str, *, failed_task: tuple[int, str] | None = None) -> str:
    """Batch's wording of a job state change; a FAILED job names the task that failed it and
    quotes that task's last event (`failed_task` = (index, description))."""
    text = f"Job state is set from {old} to {new} for job {job}."
    if new == FAILED and failed_task is not None:
        index, description = failed_task
        text += (
            " Job failed due to task failure. Specifically, task with index"
            f' {index} failed due to the following task event: "{description}"'
        )
    return text


def retry_event(attempt: int, max_retry_count: int, exit_code: int | None) -> str:
    """Our wording (Batch shows none) for a failed attempt that will be retried."""
    code = "" if exit_code is None else f" with exit code {exit_code}"
    return f"Task attempt {attempt} failed{code}; retrying ({attempt + 1} of {max_retry_count})."


def hosts_file(addresses: Sequence[str]) -> str:
    """The BATCH_HOSTS_FILE content: one line per VM of the task group, in VM order."""
    return "".join(f"{address}\n" for address in addresses)


def batch_variables(task_count: int, attempt: int, hosts_path: str | None) -> dict[str, str]:
    """The `BATCH_*` variables the server passes in a task's spec (the agent adds the index)."""
    values = {"BATCH_TASK_COUNT": str(task_count), "BATCH_TASK_RETRY_ATTEMPT": str(attempt)}
    if hosts_path is not None:
        values["BATCH_HOSTS_FILE"] = hosts_path
    return values
