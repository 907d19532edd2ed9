"""TaskRecord: the state machine's edges; every other change of state is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from batch_agent.tasks.record import EDGES, IllegalTransition, RunnableRecord, TaskRecord
from batch_agent.wire import TaskState

ALL = list(TaskState)
ALLOWED = [(a, b) for a in ALL for b in ALL if b in EDGES[a]]
ILLEGAL = [(a, b) for a in ALL for b in ALL if b not in EDGES[a]]


def record_in(state: TaskState) -> TaskRecord:
    record = TaskRecord(task_id="t", raw={})
    record.state = state
    return record


def test_the_edges_are_the_documented_ones():
    """A task runs then ends, or fails before it starts; nothing ever leaves an end state."""
    assert set(ALLOWED) == {
        (TaskState.ASSIGNED, TaskState.RUNNING),
        (TaskState.ASSIGNED, TaskState.FAILED),
        (TaskState.RUNNING, TaskState.SUCCEEDED),
        (TaskState.RUNNING, TaskState.FAILED),
    }


@pytest.mark.parametrize(("old", "new"), ILLEGAL)
def test_every_illegal_transition_raises_and_changes_nothing(old, new):
    """An edge outside the table raises IllegalTransition; state and events stay as they were."""
    record = record_in(old)
    with pytest.raises(IllegalTransition):
        record.transition(new, at=datetime.now(UTC), where="zones/z/instances/1")
    assert record.state is old and record.events == []


@pytest.mark.parametrize(("old", "new"), ALLOWED)
def test_every_allowed_transition_appends_its_event(old, new):
    """An allowed edge moves the state and appends one STATUS_CHANGED event for it."""
    record = record_in(old)
    record.transition(new, at=datetime.now(UTC), where="zones/z/instances/1", exit_code=0)
    assert record.state is new
    assert record.events[-1]["taskState"] == new.value
    assert f"from {old} to {new}" in record.events[-1]["description"]


def test_only_a_failure_carries_task_execution():
    """taskExecution is "only defined for task-level status events where the task fails"
    (discovery, StatusEvent): FAILED carries the code, SUCCEEDED and RUNNING do not."""
    where, now = "zones/z/instances/1", datetime.now(UTC)
    succeeded, failed = record_in(TaskState.RUNNING), record_in(TaskState.RUNNING)
    succeeded.transition(TaskState.SUCCEEDED, at=now, where=where, exit_code=0)
    failed.transition(TaskState.FAILED, at=now, where=where, exit_code=3)
    assert "taskExecution" not in succeeded.events[-1]
    assert succeeded.exit_code == 0  # the record still knows it, for status and metrics
    assert failed.events[-1]["taskExecution"] == {"exitCode": 3}
    started = record_in(TaskState.ASSIGNED)
    started.transition(TaskState.RUNNING, at=now, where=where)
    assert "taskExecution" not in started.events[-1]


def test_the_json_form_follows_every_change_of_a_runnable():
    """A runnable's encoded form is kept between saves, and never outlives a change."""
    record = TaskRecord(task_id="t", raw={}, runtime="/run/batch-agent/tasks")
    record.runnables[1] = RunnableRecord(started_at="2026-12-02T10:00:00Z")
    record.runnables[2] = RunnableRecord(container=True)
    assert TaskRecord.from_json(record.to_json(), {}) == record
    record.runnables[1].adopt(RunnableRecord(pid=42, start_time=7).handle())
    record.runnables[1].stdout_offset = 100
    record.runnables[2].exit_code = 3
    again = TaskRecord.from_json(record.to_json(), {})
    assert again == record
    assert (again.runnables[1].pid, again.runnables[1].stdout_offset) == (42, 100)
    assert again.runnables[2].exit_code == 3 and again.runtime == "/run/batch-agent/tasks"
