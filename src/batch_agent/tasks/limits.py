"""A task's time limits as Batch counts them: runnable `timeout` and task `maxRunDuration`.

Batch's "set timeouts" page counts a task's run time as the SUM of its runnables' run times
(three runnables running together for one minute use three minutes), background runnables
included while they run; a runnable's timeout counts from its own start. Each runnable's start
and end are persisted in its record, so an agent restart resets neither clock. A runnable that
ended while no agent watched counts until the agent saw it ended (it errs on the short side).
Pure: no I/O; the wording of the causes comes from `events`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from batch_agent.tasks import events
from batch_agent.tasks.plan import RunnablePlan, TaskPlan
from batch_agent.tasks.record import RunnableRecord
from batch_agent.wire import format_duration, parse_time


def used(runnables: Mapping[int, RunnableRecord], now: datetime) -> tuple[timedelta, int]:
    """The task's run time so far, and how many of its runnables are running (their time
    grows together)."""
    total, running = timedelta(0), 0
    for record in runnables.values():
        if record.started_at is None:
            continue
        end = parse_time(record.ended_at) if record.ended_at else now
        running += record.ended_at is None
        total += max(end - parse_time(record.started_at), timedelta(0))
    return total, running


def until_max_run(
    plan: TaskPlan, runnables: Mapping[int, RunnableRecord], now: datetime
) -> timedelta | None:
    """Wall-clock time until maxRunDuration is used up at today's rate (zero once it is);
    None when there is no limit or nothing runs (then no run time passes)."""
    if plan.max_run_duration is None:
        return None
    spent, running = used(runnables, now)
    left = plan.max_run_duration - spent
    if left <= timedelta(0):
        return timedelta(0)
    return left / running if running else None


def max_run_cause(plan: TaskPlan) -> str:
    assert plan.max_run_duration is not None
    return events.timed_out(events.max_run_duration(format_duration(plan.max_run_duration)))


def runnable_cause(runnable: RunnablePlan) -> str:
    assert runnable.timeout is not None
    return events.timed_out(
        events.runnable_timeout(runnable.index, format_duration(runnable.timeout))
    )


def until_timeout(
    runnable: RunnablePlan, record: RunnableRecord, now: datetime
) -> timedelta | None:
    """Wall-clock time until `runnable`'s own timeout (zero once it passed); None if none."""
    if runnable.timeout is None or record.started_at is None:
        return None
    return max(parse_time(record.started_at) + runnable.timeout - now, timedelta(0))


def first_timeout(
    running: Mapping[int, RunnablePlan], runnables: Mapping[int, RunnableRecord], now: datetime
) -> tuple[timedelta | None, str | None]:
    """Of the `running` runnables' own timeouts, the one reached first: (wall time until it,
    its cause), or (None, None) when none has a timeout."""
    found: list[tuple[timedelta, str]] = []
    for k, runnable in running.items():
        left = until_timeout(runnable, runnables[k], now) if k in runnables else None
        if left is not None:
            found.append((left, runnable_cause(runnable)))
    return min(found, key=lambda c: c[0]) if found else (None, None)
