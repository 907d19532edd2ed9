"""The wording of status events (tasks/events.py): Google's documented sentences word for word,
our own where Google says nothing, and docs/events.md listing them all."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from batch_agent.store import TaskStore
from batch_agent.tasks import events
from batch_agent.tasks.events import ExitCode
from batch_agent.tasks.record import IllegalTransition, TaskRecord
from batch_agent.tasks.taskset import TaskSet, TaskSettings
from batch_agent.wire import TaskState

WHERE = "zones/us-central1-a/instances/1234567890123456789"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "events.md"

# The troubleshooting guide's REASON for each reserved exit code, copied from the guide.
GOOGLE = {
    50001: "Spot Preemption",
    50002: "Batch no longer receives VM updates",
    50003: "VM is rebooted during task execution",
    50004: "tasks cannot be canceled",
    50005: "task runs over the maximum runtime",
    50006: "VM is recreated during task execution",
}


@pytest.mark.parametrize(("code", "reason"), sorted(GOOGLE.items()))
def test_a_reserved_code_gets_googles_exact_sentence(code: int, reason: str) -> None:
    """50001-50006: `... due to REASON with exit code N.`, whatever cause the agent knows."""
    text = events.state_changed(
        TaskState.RUNNING, TaskState.FAILED, where=WHERE, exit_code=code, cause="our detail"
    )
    assert text == (
        f"Task state is updated from RUNNING to FAILED on {WHERE} due to {reason}"
        f" with exit code {code}."
    )
    assert events.is_reserved(code)


def test_the_reserved_table_is_exactly_googles() -> None:
    """The reasons are the six of the guide, keyed by the ExitCode members."""
    assert dict(events.RESERVED_REASONS) == GOOGLE
    assert set(events.RESERVED_REASONS) == set(ExitCode) - {ExitCode.AGENT_FAILURE}


def test_the_state_before_is_named_as_it_was() -> None:
    """A reserved failure from ASSIGNED says ASSIGNED (the guide's usual RUNNING is an example)."""
    text = events.state_changed(
        TaskState.ASSIGNED, TaskState.FAILED, where=WHERE, exit_code=ExitCode.VM_REBOOTED
    )
    assert text.startswith("Task state is updated from ASSIGNED to FAILED on ")
    assert text.endswith(" due to VM is rebooted during task execution with exit code 50003.")


@pytest.mark.parametrize(
    ("code", "cause", "end"),
    [
        (3, None, f"on {WHERE} with exit code 3."),
        (0, None, f"on {WHERE} with exit code 0."),
        (143, events.CANCELLED, f"on {WHERE} due to task was cancelled with exit code 143."),
        (
            50000,
            events.invalid_spec(["runnables: empty"]),
            f"on {WHERE} due to invalid task spec (runnables: empty) with exit code 50000.",
        ),
    ],
)
def test_other_codes_keep_our_sentence(code: int, cause: str | None, end: str) -> None:
    """A runnable's own code has no `due to`; 50000 and a cancel name our cause in it."""
    assert not events.is_reserved(code)
    text = events.state_changed(
        TaskState.RUNNING, TaskState.FAILED, where=WHERE, exit_code=code, cause=cause
    )
    assert text == "Task state is updated from RUNNING to FAILED " + end


def test_a_state_change_without_a_code() -> None:
    """ASSIGNED -> RUNNING carries neither a cause nor a code."""
    text = events.state_changed(TaskState.ASSIGNED, TaskState.RUNNING, where=WHERE)
    assert text == f"Task state is updated from ASSIGNED to RUNNING on {WHERE}."


def test_the_detail_event_names_the_code_and_what_we_know() -> None:
    """What Google's sentence leaves out goes in its own event: `Exit code N: CAUSE.`"""
    cause = events.timed_out(events.runnable_timeout(1, "1s"))
    assert (
        events.reserved_detail(50005, cause) == "Exit code 50005: runnables[0].timeout 1s exceeded."
    )
    cause = events.timed_out(events.max_run_duration("1.5s"))
    assert events.reserved_detail(50005, cause) == "Exit code 50005: maxRunDuration 1.5s exceeded."


def test_docs_list_every_reserved_sentence_and_our_constants() -> None:
    """docs/events.md has each reserved REASON and every fixed text events.py defines."""
    table = DOCS.read_text(encoding="utf-8")
    for code, reason in GOOGLE.items():
        assert f"due to {reason} with exit code {code}." in table, reason
    fixed = [
        events.CANCELLED,
        events.NOT_CANCELLABLE,
        events.CANCELLED_BEFORE_START,
        events.PREEMPTED,
        events.INTERNAL_ERROR,
        events.VM_REBOOTED,
    ]
    for text in fixed:
        assert text in table, text


def test_the_task_set_puts_the_detail_just_before_the_failure(tmp_path: Path) -> None:
    """transition: one detail event then Google's sentence, both saved; none on a refused edge
    and none for a code Google documents no sentence for."""
    store = TaskStore(tmp_path / "state.db")
    settings = TaskSettings(workdir=tmp_path, where=WHERE, base_env={}, output=lambda *_: None)
    tasks = TaskSet(store, settings, on_change=lambda: None)
    timed_out, failed = TaskRecord(task_id="a", raw={}), TaskRecord(task_id="b", raw={})
    cause = events.timed_out(events.max_run_duration("2s"))

    async def go() -> None:
        await tasks.transition(timed_out, TaskState.RUNNING)
        await tasks.transition(timed_out, TaskState.FAILED, exit_code=50005, cause=cause)
        with pytest.raises(IllegalTransition):
            await tasks.transition(timed_out, TaskState.FAILED, exit_code=50005, cause=cause)
        await tasks.transition(failed, TaskState.FAILED, exit_code=50000, cause="ours")

    try:
        asyncio.run(go())
        saved = {record.task_id: record for record in store.load_all()}
    finally:
        store.close()
    assert saved["a"].events == timed_out.events  # the refused edge left no trace either
    descriptions = [e["description"] for e in timed_out.events]
    assert descriptions[1:] == [
        "Exit code 50005: maxRunDuration 2s exceeded.",
        f"Task state is updated from RUNNING to FAILED on {WHERE} due to task runs over the"
        " maximum runtime with exit code 50005.",
    ]
    assert "taskState" not in saved["a"].events[1]
    assert [e["description"] for e in saved["b"].events] == [
        f"Task state is updated from ASSIGNED to FAILED on {WHERE} due to ours"
        " with exit code 50000."
    ]
