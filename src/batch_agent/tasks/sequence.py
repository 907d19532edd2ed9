"""The pure rules of a task's sequence: which runnable starts next, and what a runnable's
result means for the task (its exit code, and the cause to name).

Batch's rules, table-tested without processes: after a failure only alwaysRun runnables start,
once maxRunDuration is spent nothing does; a runnable without a code of its own (it could not
start, or its status was lost) gives the task 50000; a failure is the task's outcome before a
background runnable's, and a cancel fails the task. Pure: no I/O, no clock; the wording of
the causes comes from `events`.
"""

from __future__ import annotations

from batch_agent.tasks import events
from batch_agent.tasks.events import ExitCode
from batch_agent.tasks.execution import EXIT_CODE_UNKNOWN, ExitResult
from batch_agent.tasks.plan import RunnablePlan


def next_runnable(
    runnables: tuple[RunnablePlan, ...], after: int, *, failed: bool, expired: bool
) -> RunnablePlan | None:
    """The next runnable to start after 1-based index `after`, or None when the task is done.

    After a failure only alwaysRun runnables start; once maxRunDuration expired nothing does.
    """
    if expired:
        return None
    for runnable in runnables[after:]:
        if failed and not runnable.always_run:
            continue
        return runnable
    return None


def task_code(result: ExitResult) -> int:
    """The task exit code for a runnable's result: 50000 when it has no code of its own."""
    if not result.started or result.exit_code == EXIT_CODE_UNKNOWN:
        return ExitCode.AGENT_FAILURE
    return result.exit_code


def lost_cause(result: ExitResult) -> str | None:
    """The cause to name when a runnable's own status was lost (its code becomes 50000)."""
    return result.reason if result.exit_code == EXIT_CODE_UNKNOWN else None


def cannot_start(k: int, result: ExitResult) -> ExitResult:
    """The task's result when runnable `k` could not start: its code, and the event's cause."""
    code = task_code(result)
    return ExitResult(code, reason=events.cannot_start(k, result.reason or f"exit code {code}"))


def task_outcome(
    failure: ExitResult | None,
    background_failure: ExitResult | None,
    *,
    cancelled: bool,
    stopped: bool,
) -> ExitResult:
    """The task's outcome once the sequence is over: the first failure; else a background
    runnable that failed on its own before the rest were stopped (our choice; Batch does not
    say); else success. A cancelled task fails CANCELLED (keeping the failure's code), or
    NOT_CANCELLABLE when something of it could not be stopped."""
    if cancelled:
        if not stopped:
            return ExitResult(ExitCode.NOT_CANCELLABLE, reason=events.NOT_CANCELLABLE)
        code = failure.exit_code if failure else ExitCode.AGENT_FAILURE
        return ExitResult(code, reason=events.CANCELLED)
    return failure or background_failure or ExitResult(0)
