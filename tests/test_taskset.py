"""TaskSet.apply: what a response does to the tasks the agent holds (real runs, a real store)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from batch_agent.store import TaskStore
from batch_agent.tasks.taskset import TaskSet, TaskSettings
from batch_agent.wire import TaskState, parse_task_head

WHERE = "zones/us-central1-a/instances/1234567890123456789"
NAME = "task/j-1-group0-0/0/0"
# A short script, then barrier 2 (its 1-based index), then `true`.
SPEC = {
    "runnables": [
        {"script": {"text": "sleep 0.01"}},
        {"barrier": {"name": "b"}},
        {"script": {"text": "true"}},
    ]
}


def _answer(**fields: Any) -> dict[str, Any]:
    return {"task": NAME, "intendedState": "ASSIGNED", "spec": SPEC, **fields}


async def _until(predicate: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def _run(tmp_path: Path, go: Any) -> None:
    store = TaskStore(tmp_path / "state.db")
    settings = TaskSettings(
        workdir=tmp_path / "tasks", where=WHERE, base_env={}, output=lambda *_: None
    )
    tasks = TaskSet(store, settings, on_change=lambda: None)

    async def main() -> None:
        try:
            await go(tasks)
        finally:
            await tasks.close()

    try:
        asyncio.run(main())
    finally:
        store.close()


def _state(tasks: TaskSet) -> TaskState:
    (record,) = tasks.all_records()
    return record.state


def test_a_known_task_is_read_by_its_head_alone(tmp_path: Path) -> None:
    """Once accepted, a task's later answers count only for their name, intended state and
    barrier: the barrier is passed and the task ends, though those answers' specs are junk."""

    async def go(tasks: TaskSet) -> None:
        assert await tasks.apply([_answer()]) == 1
        (record,) = tasks.all_records()
        await _until(lambda: record.runnable == 2)  # at the barrier
        assert await tasks.apply([_answer(spec="junk", reachedBarrier="1")]) == 0
        await asyncio.sleep(0.1)
        assert record.state is TaskState.RUNNING  # barrier 2 not reached yet
        assert await tasks.apply([_answer(spec="junk", reachedBarrier="2")]) == 0
        await _until(lambda: record.state.is_terminal)
        assert record.state is TaskState.SUCCEEDED

    _run(tmp_path, go)


def test_a_known_task_is_cancelled_and_deleted_by_its_head(tmp_path: Path) -> None:
    """CANCELLED then DELETED reach a known task whatever else its answers hold."""

    async def go(tasks: TaskSet) -> None:
        await tasks.apply([_answer()])
        (record,) = tasks.all_records()
        await _until(lambda: record.runnable == 2)
        await tasks.apply([_answer(spec="junk", intendedState="CANCELLED")])
        await _until(lambda: record.state.is_terminal)
        assert record.state is TaskState.FAILED
        await tasks.apply([{"task": NAME, "intendedState": "DELETED", "spec": "junk"}])
        assert tasks.snapshot() == []
        await _until(lambda: not tasks.all_records())

    _run(tmp_path, go)


def test_an_unreadable_head_is_left_to_the_full_parse() -> None:
    """parse_task_head: the three fields as parse_agent_task reads them, or None."""
    head = parse_task_head({"task": NAME, "intended_state": "CANCELLED", "reachedBarrier": 3})
    assert head is not None
    assert (head.task, head.intended_state, head.reached_barrier) == (NAME, "CANCELLED", 3)
    assert parse_task_head({"task": NAME, "reachedBarrier": "x"}) is None
    assert parse_task_head({"task": NAME, "intendedState": "GONE"}) is None
    assert parse_task_head({"intendedState": "DELETED"}) is None
    assert parse_task_head(["not", "an", "object"]) is None


def test_the_tasks_one_answer_deletes_are_all_forgotten(tmp_path: Path) -> None:
    """Several DELETED in one answer (their folders removed in one trip): every folder and
    record goes, and the same name may then be assigned again."""
    names = [f"task/j-1-group0-{i}/0/0" for i in range(3)]
    done = {"runnables": [{"script": {"text": "true"}}]}

    async def go(tasks: TaskSet) -> None:
        await tasks.apply([{"task": n, "spec": done} for n in names])
        await _until(lambda: all(r.state.is_terminal for r in tasks.all_records()))
        assert len(list((tmp_path / "tasks").iterdir())) == 3
        await tasks.apply([{"task": n, "intendedState": "DELETED"} for n in names])
        await _until(lambda: not tasks.all_records())
        assert list((tmp_path / "tasks").iterdir()) == []
        assert await tasks.apply([{"task": names[0], "spec": done}]) == 1

    _run(tmp_path, go)
    store = TaskStore(tmp_path / "state.db")
    try:
        assert [r.task_id for r in store.load_all()] == names[:1]
    finally:
        store.close()
