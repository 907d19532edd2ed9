"""Behaviours of docs/conformance.md that no other test covered: barriers' events and when a
task skips or leaves a barrier, the deprecated `TaskSpec.environments`, and runnables run as the
agent's user when there is no `userAccount`. Each runs one real task in process
(tests/test_runner.py's `Task`: real scripts, every save kept) and names the conformance row it
proves.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from batch_agent.tasks import events
from batch_agent.tasks.events import ExitCode
from batch_agent.wire import TaskState
from tests.test_runner import Task, held_at_barrier, script

pytestmark = pytest.mark.timeout(60)

# A barrier nobody releases would hold a run for ever: a run that should skip or leave one
# gets this long before the test calls it stuck.
STUCK = 20.0


def run_within(task: Task, seconds: float = STUCK) -> None:
    asyncio.run(asyncio.wait_for(task.run.run(), seconds))


def descriptions(task: Task) -> list[str]:
    return [str(e["description"]) for e in task.record.events]


def test_a_barrier_with_a_display_name_adds_its_event_when_reached(tmp_path: Path) -> None:
    """C2: a barrier runnable with a displayName adds `Barrier "NAME" reached.` once the task
    reaches it, before the runnables after it run."""
    marker = tmp_path / "after"
    task = Task(
        tmp_path,
        [
            script("true"),
            {"barrier": {"name": "b"}, "displayName": "sync"},
            script(f"touch {marker}", displayName="after"),
        ],
    )
    task.run.update_barrier(2)
    run_within(task)
    assert task.record.state is TaskState.SUCCEEDED and marker.exists()
    seen = descriptions(task)
    assert seen.count(events.barrier_reached("sync")) == 1
    assert seen.index(events.barrier_reached("sync")) < seen.index(events.runnable_started("after"))


def test_a_barrier_without_a_display_name_adds_no_event(tmp_path: Path) -> None:
    """C2: only a barrier with a displayName gets an event; the state events are all there is."""
    task = Task(tmp_path, [{"barrier": {"name": "b"}}, script("true")])
    task.run.update_barrier(1)
    run_within(task)
    assert task.record.state is TaskState.SUCCEEDED
    assert [e.get("taskState") for e in task.record.events] == ["RUNNING", "SUCCEEDED"]


def test_a_failed_task_skips_its_later_barrier_but_not_always_run(tmp_path: Path) -> None:
    """BR3: after a failure a barrier is skipped like any runnable (no server ever releases this
    one), and a later alwaysRun runnable still runs; the task keeps the failure's code."""
    marker = tmp_path / "cleanup"
    task = Task(
        tmp_path,
        [
            script("exit 3"),
            {"barrier": {"name": "b"}, "displayName": "sync"},
            script(f"touch {marker}", alwaysRun=True),
        ],
    )
    run_within(task)
    assert (task.record.state, task.record.exit_code) == (TaskState.FAILED, 3)
    assert marker.exists()
    assert events.barrier_reached("sync") not in descriptions(task)


def test_an_always_run_barrier_is_still_waited_for_after_a_failure(tmp_path: Path) -> None:
    """BR3: an alwaysRun barrier after a failure is reached and waited for like any other."""
    marker = tmp_path / "after"
    task = Task(
        tmp_path,
        [
            script("exit 3"),
            {"barrier": {"name": "b"}, "alwaysRun": True},
            script(f"touch {marker}", alwaysRun=True),
        ],
    )

    held_at_barrier(task, 2, marker, STUCK)
    assert (task.record.state, task.record.exit_code) == (TaskState.FAILED, 3)
    assert marker.exists()


def test_a_cancel_ends_the_wait_at_a_barrier_and_nothing_more_starts(tmp_path: Path) -> None:
    """BR3, I1: a task cancelled while it waits at a barrier fails as cancelled at once; no
    runnable after the barrier starts, alwaysRun included."""
    marker = tmp_path / "after"
    task = Task(
        tmp_path,
        [
            script("true"),
            {"barrier": {"name": "b"}},
            script(f"touch {marker}", alwaysRun=True),
        ],
    )

    async def scenario() -> None:
        running = asyncio.create_task(task.run.run())
        while task.record.runnable < 2:
            await asyncio.sleep(0.01)
        task.run.cancel()
        await asyncio.wait_for(running, STUCK)

    asyncio.run(scenario())
    assert task.record.state is TaskState.FAILED
    assert task.record.exit_code == ExitCode.AGENT_FAILURE  # nothing of it was running
    assert events.CANCELLED in task.last_event
    assert not marker.exists()
    assert sorted(task.record.runnables) == [1]


def test_max_run_duration_ends_the_wait_at_a_barrier(tmp_path: Path) -> None:
    """BR3, R5: maxRunDuration spent (by a background runnable) while the task waits at a
    barrier fails it with 50005; nothing after the barrier runs, not even alwaysRun."""
    marker = tmp_path / "cleanup"
    task = Task(
        tmp_path,
        [
            script("exec sleep 60", background=True),
            {"barrier": {"name": "b"}},
            script(f"touch {marker}", alwaysRun=True),
        ],
        spec={"maxRunDuration": "0.5s"},
    )
    run_within(task)
    assert (task.record.state, task.record.exit_code) == (TaskState.FAILED, 50005)
    assert task.detail_event == "Exit code 50005: maxRunDuration 0.5s exceeded."
    assert not marker.exists()
    assert task.record.runnables[1].exit_code == 143  # the background was stopped


def test_the_deprecated_environments_map_still_sets_variables(tmp_path: Path) -> None:
    """V7: `TaskSpec.environments` (deprecated) sets variables for every runnable;
    `environment.variables` wins over it for the same name."""
    out = tmp_path / "out"
    task = Task(
        tmp_path,
        [script(f'echo "$OLD $BOTH" > {out}')],
        spec={
            "environments": {"OLD": "old", "BOTH": "from-environments"},
            "environment": {"variables": {"BOTH": "from-environment"}},
        },
    )
    task.go()
    assert task.record.state is TaskState.SUCCEEDED
    assert out.read_text().split() == ["old", "from-environment"]


def test_without_user_account_runnables_run_as_the_agents_user(tmp_path: Path) -> None:
    """U1: with no userAccount a script runs as the agent's own uid and gid (root on a Batch
    VM), with root's HOME."""
    out = tmp_path / "out"
    Task(tmp_path, [script(f'echo "$(id -u) $(id -g) $HOME" > {out}')]).go()
    assert out.read_text().split() == [str(os.geteuid()), str(os.getegid()), "/root"]
