"""All wording of task status events: an interface users grep for, so it lives only here.

State changes use Batch's sentence (`Task state is updated from RUNNING to FAILED on
zones/<zone>/instances/<id> with exit code 3.`). For a reserved exit code (50001-50006) the
sentence is exactly the one Google's troubleshooting guide documents, `due to REASON` and all;
what we know beyond it (which limit fired...) is a separate event, `reserved_detail`, just
before. Where Batch says nothing (50000, a cancel), our own cause follows `due to`. Every text
is listed in docs/events.md. Pure: no I/O.
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


# Google's REASON for each reserved code, word for word (troubleshooting, "Task failure exit
# codes"); 50002 and 50006 are the server's to give, listed so the table is whole.
RESERVED_REASONS: dict[int, str] = {
    ExitCode.PREEMPTED: "Spot Preemption",
    ExitCode.NO_REPORTS: "Batch no longer receives VM updates",
    ExitCode.VM_REBOOTED: "VM is rebooted during task execution",
    ExitCode.NOT_CANCELLABLE: "tasks cannot be canceled",
    ExitCode.TIMED_OUT: "task runs over the maximum runtime",
    ExitCode.VM_RECREATED: "VM is recreated during task execution",
}


def is_reserved(exit_code: int | None) -> bool:
    """Whether Google documents the exact FAILED sentence for `exit_code`."""
    return exit_code in RESERVED_REASONS


def state_changed(
    old: TaskState,
    new: TaskState,
    *,
    where: str,
    exit_code: int | None = None,
    cause: str | None = None,
) -> str:
    """`Task state is updated from A to B on <where>[ due to <cause>][ with exit code N].`

    For a reserved exit code the cause is Google's REASON and `cause` is left out (it belongs in
    `reserved_detail`)."""
    text = f"Task state is updated from {old} to {new} on {where}"
    if exit_code is not None and exit_code in RESERVED_REASONS:
        cause = RESERVED_REASONS[exit_code]
    if cause:
        text += f" due to {cause}"
    if exit_code is not None:
        text += f" with exit code {exit_code}"
    return text + "."


def reserved_detail(exit_code: int, cause: str) -> str:
    """The event just before a reserved code's FAILED one: what Google's sentence leaves out."""
    return f"Exit code {exit_code}: {cause}."


def invalid_spec(problems: list[str]) -> str:
    return "invalid task spec (" + "; ".join(problems) + ")"


def timed_out(limit: str) -> str:
    """The cause of a 50005: which limit fired (Google's sentence does not say; our detail
    event does)."""
    return limit


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


def script_not_written(error: OSError) -> str:
    return f"its script could not be written: {error.strerror or error}"


def cannot_start(index: int, reason: str) -> str:
    return f"runnables[{index - 1}] could not start: {reason}"


PREEMPTED = "the VM got its preemption notice"
INTERNAL_ERROR = "an internal error of the agent"
VM_REBOOTED = "the VM booted again since the task was started"


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


def cloud_logging_denied(detail: str) -> str:
    """Cloud Logging answered 403 to this task's output (a warning: the task goes on)."""
    detail = detail if len(detail) <= 300 else detail[:300] + "..."
    return (
        f"Cloud Logging refused this task's logs ({detail}); the agent keeps them on the VM"
        " and retries. Check that the Cloud Logging API is enabled and that the VM's service"
        " account has roles/logging.logWriter."
    )
