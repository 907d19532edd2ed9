"""TaskStore: records survive closing and reopening the database, as after a crash."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from batch_agent.store import TaskStore
from batch_agent.tasks.record import RunnableRecord, TaskRecord
from batch_agent.wire import TaskState


def test_records_survive_reopen_and_delete(tmp_path):
    """What was saved is loaded again, in order, with its events and runnables; deletes stick."""
    path = tmp_path / "state.db"

    async def write() -> None:
        store = TaskStore(path)
        first = TaskRecord(task_id="a", raw={"task": "a"})
        first.transition(TaskState.RUNNING, at=datetime.now(UTC), where="zones/z/instances/1")
        first.runnables[1] = RunnableRecord(pid=42, start_time=7, stdout_offset=10)
        await store.save(first)
        await store.save(TaskRecord(task_id="b", raw={"task": "b"}))
        await store.save(TaskRecord(task_id="c", raw={"task": "c"}))
        await store.delete("b")
        await store.set_fact("boot_time", "x")
        store.close()

    asyncio.run(write())
    store = TaskStore(path)
    try:
        records = store.load_all()
        assert [r.task_id for r in records] == ["a", "c"]
        assert records[0].state is TaskState.RUNNING
        assert records[0].started_at is not None
        assert records[0].runnables[1] == RunnableRecord(pid=42, start_time=7, stdout_offset=10)
        assert "ASSIGNED to RUNNING" in records[0].events[0]["description"]
        assert store.fact("boot_time") == "x"
        assert store.fact("missing") is None
    finally:
        store.close()


def test_a_terminal_record_cannot_change_state():
    """transition() refuses to leave SUCCEEDED/FAILED: terminal means terminal."""
    record = TaskRecord(task_id="a", raw={})
    now = datetime.now(UTC)
    record.transition(TaskState.FAILED, at=now, where="w", exit_code=3)
    try:
        record.transition(TaskState.RUNNING, at=now, where="w")
    except ValueError as error:
        assert "FAILED" in str(error)
    else:
        raise AssertionError("a FAILED task became RUNNING")
    assert record.exit_code == 3
    assert record.events[-1]["taskExecution"] == {"exitCode": 3}
