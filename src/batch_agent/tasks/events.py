"""All wording of task status events: an interface users grep for, so it lives only here.

The sentences follow Batch's own (`Task state is updated from RUNNING to FAILED on
zones/<zone>/instances/<id> with exit code 3.`); where Batch says nothing, ours name the cause.
"""

from __future__ import annotations

import json
from enum import IntEnum

from batch_agent.wire import TaskState

STATUS_CHANGED = "STATUS_CHANGED"


class ExitCode(IntEnum):
    """Batch's reserved exit codes (troubleshooting docs)."""

    AGENT_FAILURE = 50000  # no runnable code: bad spec, image pull, secret fetch...
    PREEMPTED = 50001
    NO_REPORTS = 50002
    VM_REBOOTED = 50003
    NOT_CANCELLABLE = 50004
    TIMED_OUT = 50005
    VM_RECREATED = 50006


def state_changed(
    old: TaskState,
    new: TaskState,
    *,
    where: str,
    exit_code: int | None = None,
    cause: str | None = None,
) -> str:
    """`Task state is updated from A to B on <where>[ due to <cause>][ with exit code N].`"""
    text = f"Task state is updated from {old} to {new} on {where}"
    if cause:
        text += f" due to {cause}"
    if exit_code is not None:
        text += f" with exit code {exit_code}"
    return text + "."


def invalid_spec(problems: list[str]) -> str:
    return "invalid task spec (" + "; ".join(problems) + ")"


def timed_out(limit: str) -> str:
    """`limit` says which fired: Google's event does not, ours does."""
    return f"task runs over the maximum runtime ({limit})"


def runnable_timeout(index: int, timeout: str) -> str:
    return f"runnables[{index - 1}].timeout {timeout} exceeded"


def max_run_duration(duration: str) -> str:
    return f"maxRunDuration {duration} exceeded"


CANCELLED = "task was cancelled"
NOT_CANCELLABLE = "task was cancelled but could not be stopped"
CANCELLED_BEFORE_START = "task was cancelled before it started"


def unknown_user(uid: int) -> str:
    return f"userAccount: uid {uid} does not exist on this VM"


def task_folder_failed(folder: str, error: str) -> str:
    return f"task folder {folder}: {error}"


def secret_unavailable(what: str, path: str, error: str) -> str:
    """`what`: `variable NAME of the task`, `encryptedVariables of runnables[1]`, ...;
    `path`: the Secret Manager version or the KMS key; `error`: the API's."""
    return f"cannot resolve {what} from {path}: {error}"


def status_lost(label: str) -> str:
    return f"{label}: its exit status was lost while the agent was down"


def container_vanished(label: str) -> str:
    return f"{label}: its container vanished while the agent was down"


def missing_script(index: int, path: str) -> str:
    return f'runnables[{index - 1}].script.path: "{path}" does not exist'


def cannot_start(index: int, reason: str) -> str:
    return f"runnables[{index - 1}] could not start: {reason}"


PREEMPTED = "the VM was preempted"
INTERNAL_ERROR = "an internal error of the agent"
VM_REBOOTED = "the VM rebooted during the task"


def runnable_started(name: str) -> str:
    return f'Runnable "{name}" started.'


def runnable_finished(name: str, exit_code: int) -> str:
    return f'Runnable "{name}" finished with exit code {exit_code}.'


def barrier_reached(name: str) -> str:
    return f'Barrier "{name}" reached.'


def custom_events_dropped(kept: int) -> str:
    return f"more custom events were printed; only the first {kept} are recorded"


CUSTOM_EVENT_KEY = "batch/custom/event"


def custom_event(line: str) -> str | None:
    """The description of a `{"batch/custom/event": "..."}` line a runnable printed, or None."""
    if CUSTOM_EVENT_KEY not in line:
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    value = entry.get(CUSTOM_EVENT_KEY) if isinstance(entry, dict) else None
    return value if isinstance(value, str) and value else None


# `reason` is the store's: `no space left in /var/lib/batch-agent`, or the error and the dir.
CANNOT_RECORD = "the agent cannot record the task: {reason}"
