"""A task's time limits: runnable `timeout` and task `maxRunDuration`, and which one fires.

Pure: computed from the plan, the persisted start of the task (so an agent restart does not
reset the clock) and the current time; the wording of the cause comes from `events`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from batch_agent.tasks import events
from batch_agent.tasks.plan import RunnablePlan, TaskPlan
from batch_agent.wire import format_duration, parse_time


def remaining(plan: TaskPlan, started_at: str | None, now: datetime) -> timedelta | None:
    """Time left of maxRunDuration counted from `started_at` (RFC 3339), never negative;
    None when there is no limit or the task has not started."""
    if plan.max_run_duration is None or started_at is None:
        return None
    left = parse_time(started_at) + plan.max_run_duration - now
    return max(left, timedelta(0))


def max_run_cause(plan: TaskPlan) -> str:
    assert plan.max_run_duration is not None
    return events.timed_out(events.max_run_duration(format_duration(plan.max_run_duration)))


def runnable_limit(
    plan: TaskPlan, runnable: RunnablePlan, left: timedelta | None
) -> tuple[timedelta | None, str | None]:
    """How long `runnable` may run given `left` of maxRunDuration, and the cause if it does not
    end in time; (None, None) when nothing limits it."""
    if runnable.timeout is not None and (left is None or runnable.timeout < left):
        cause = events.runnable_timeout(runnable.index, format_duration(runnable.timeout))
        return runnable.timeout, events.timed_out(cause)
    if left is not None:
        return left, max_run_cause(plan)
    return None, None
