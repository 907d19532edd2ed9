"""TaskRun in process: real scripts, a recording lifecycle, every save checked.

The semantics of one task without an agent process or report intervals: each case runs a real
task through its real drivers and hooks, and looks at what was persisted, in order.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from batch_agent.tasks import events, procfs
from batch_agent.tasks.assembly import TaskSettings, make_run
from batch_agent.tasks.deadlines import Deadlines
from batch_agent.tasks.env import base_environment
from batch_agent.tasks.folders import task_dir
from batch_agent.tasks.plan import make_plan
from batch_agent.tasks.record import RunnableRecord, TaskRecord
from batch_agent.tasks.runner import TaskRun
from batch_agent.wire import AgentTask, TaskState, format_time, parse_time

pytestmark = pytest.mark.timeout(60)

NAME = "projects/1/locations/r/jobs/j/taskGroups/group0/tasks/3"
WHERE = "zones/z/instances/1"


class Recorder:
    """A lifecycle that applies transitions as the task set does and keeps every save."""

    def __init__(self) -> None:
        self.saves: list[dict[str, Any]] = []
        self.notices = 0

    async def transition(
        self,
        record: TaskRecord,
        new: TaskState,
        *,
        exit_code: int | None = None,
        cause: str | None = None,
    ) -> None:
        record.transition(new, at=datetime.now(UTC), where=WHERE, exit_code=exit_code, cause=cause)
        await self.persist(record)
        self.notify()

    async def persist(self, record: TaskRecord) -> None:
        self.saves.append(json.loads(record.to_json()))

    def notify(self) -> None:
        self.notices += 1

    @property
    def states(self) -> list[str]:
        return [save["state"] for save in self.saves]


class Task:
    """One task's run in tmp_path, with its recorder and the output lines it shipped."""

    def __init__(
        self,
        tmp_path: Path,
        runnables: list[dict[str, Any]],
        record: TaskRecord | None = None,
        recorder: Recorder | None = None,
        settings: dict[str, Any] | None = None,
        **spec: Any,
    ) -> None:
        self.recorder = recorder or Recorder()
        self.lines: list[str] = []
        agent_task = AgentTask.from_wire(
            {"task": NAME, "spec": {"runnables": runnables, **spec.pop("spec", {})}, **spec}
        )
        self.record = record or TaskRecord(task_id=NAME, raw={})
        task_settings = TaskSettings(
            workdir=tmp_path / "tasks",
            where=WHERE,
            base_env=base_environment(os.environ),
            output=lambda tag, stream, lines: self.lines.extend(lines),
            kill_grace=timedelta(seconds=1),
            **(settings or {}),
        )
        self.run: TaskRun = make_run(
            self.record,
            make_plan(agent_task),
            task_settings,
            lifecycle=self.recorder,
            engine=_no_engine,
            resumed=record is not None,
        )

    def go(self) -> TaskRecord:
        asyncio.run(self.run.run())
        return self.record

    @property
    def last_event(self) -> str:
        return str(self.record.events[-1]["description"])

    @property
    def detail_event(self) -> str:
        """The event before the last: what a reserved code's sentence leaves out."""
        return str(self.record.events[-2]["description"])


def _no_engine() -> Any:
    raise AssertionError("a script-only task asked for the Docker engine")


def script(text: str, **fields: Any) -> dict[str, Any]:
    return {"script": {"text": text}, **fields}


def test_two_silent_scripts_cost_three_saves(tmp_path):
    """RUNNING with runnable 1's intent, runnable 2's intent (each before its start),
    SUCCEEDED; exit codes and pids ride on the next save, never on a save of their own."""
    task = Task(tmp_path, [script("exit 0"), script("exit 0")])
    record = task.go()
    assert record.state is TaskState.SUCCEEDED
    saves = task.recorder.saves
    assert task.recorder.states == ["RUNNING", "RUNNING", "SUCCEEDED"]
    intent_1, intent_2 = saves[0]["runnables"]["1"], saves[1]["runnables"]
    assert intent_1["pid"] is None and intent_1["exit_code"] is None  # saved before the start
    assert "ASSIGNED to RUNNING" in saves[0]["events"][-1]["description"]
    assert intent_2["1"]["exit_code"] == 0 and intent_2["1"]["pid"] is not None
    assert intent_2["2"]["pid"] is None
    assert saves[-1]["runnables"]["2"]["exit_code"] == 0


def test_a_failure_skips_later_runnables_but_not_always_run(tmp_path):
    """The first failing runnable's code is the task's; only alwaysRun runs after it."""
    marker = tmp_path / "always"
    task = Task(
        tmp_path,
        [script("exit 3"), script("exit 0"), script(f"touch {marker}", alwaysRun=True)],
    )
    record = task.go()
    assert (record.state, record.exit_code) == (TaskState.FAILED, 3)
    assert sorted(record.runnables) == [1, 3]
    assert marker.exists()
    assert task.last_event.endswith("with exit code 3.")


def test_ignore_exit_status(tmp_path):
    """A runnable with ignoreExitStatus does not fail the task."""
    record = Task(tmp_path, [script("exit 9", ignoreExitStatus=True), script("true")]).go()
    assert record.state is TaskState.SUCCEEDED


def test_background_is_stopped_when_the_foreground_ends(tmp_path):
    """A background runnable still running at the end is stopped, and that is no failure."""
    record = Task(tmp_path, [script("exec sleep 300", background=True), script("true")]).go()
    assert record.state is TaskState.SUCCEEDED
    assert record.runnables[1].exit_code == 143  # SIGTERM


def test_timeout_fails_with_50005_then_always_run_runs(tmp_path):
    """A runnable over its timeout is stopped; 50005 in Google's words; alwaysRun still runs."""
    marker = tmp_path / "cleanup"
    task = Task(
        tmp_path,
        [script("exec sleep 60", timeout="0.2s"), script(f"touch {marker}", alwaysRun=True)],
    )
    record = task.go()
    assert (record.state, record.exit_code) == (TaskState.FAILED, 50005)
    assert task.last_event == (
        f"Task state is updated from RUNNING to FAILED on {WHERE}"
        " due to task runs over the maximum runtime with exit code 50005."
    )
    assert task.detail_event == "Exit code 50005: runnables[0].timeout 0.2s exceeded."
    assert marker.exists()


def test_cancel_before_start_is_one_save(tmp_path):
    """A task cancelled before it started fails at once, with one save and no runnable run."""
    task = Task(tmp_path, [script("true")])
    task.run.cancel()
    record = task.go()
    assert task.recorder.states == ["FAILED"]
    assert record.runnables == {}
    assert events.CANCELLED_BEFORE_START in task.last_event


def test_a_prestart_problem_fails_the_task_before_any_runnable(tmp_path):
    """An unknown userAccount uid fails the task with 50000 naming it; nothing starts."""
    task = Task(
        tmp_path,
        [script("true")],
        agentTaskSpec={"runnables": [], "userAccount": {"uid": "4000000", "gid": "1"}},
    )
    record = task.go()
    assert (record.state, record.exit_code) == (TaskState.FAILED, 50000)
    assert task.recorder.states == ["FAILED"]
    assert events.unknown_user(4000000) in task.last_event


def test_a_missing_script_path_fails_naming_the_field(tmp_path):
    """A script path that does not exist fails the task with 50000 and the field's path."""
    task = Task(tmp_path, [{"script": {"path": str(tmp_path / "nope")}}])
    record = task.go()
    assert record.exit_code == 50000
    assert "runnables[0].script.path" in task.last_event


def test_display_names_and_custom_events_are_saved_at_once(tmp_path):
    """displayName start/finish events and custom events each reach the record's saves."""
    line = json.dumps({"batch/custom/event": "halfway"})
    task = Task(tmp_path, [script(f"echo '{line}'", displayName="step")])
    record = task.go()
    descriptions = [e["description"] for e in record.events]
    assert descriptions[1:4] == [
        events.runnable_started("step"),
        "halfway",
        events.runnable_finished("step", 0),
    ]
    assert any("halfway" in str(save["events"]) for save in task.recorder.saves[:-1])


def test_custom_events_are_capped(tmp_path):
    """A flood of custom events keeps the first hundred and says that more were dropped."""
    line = json.dumps({"batch/custom/event": "tick"})
    task = Task(tmp_path, [script(f"for i in $(seq 500); do echo '{line}'; done")])
    record = task.go()
    descriptions = [e["description"] for e in record.events]
    assert descriptions.count("tick") == 100
    assert descriptions.count(events.custom_events_dropped(100)) == 1
    assert record.custom_events == 500


def held_at_barrier(task: Task, k: int, marker: Path, timeout: float = 20.0) -> None:
    """Run `task` until it reports barrier `k`, check that it waits there (`marker`, made by a
    later runnable, does not appear), then release the barrier and run it to its end."""

    async def scenario() -> None:
        running = asyncio.create_task(task.run.run())
        while task.record.runnable < k:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # time enough to start the next runnable, were it not waiting
        assert not marker.exists() and not running.done()
        task.run.update_barrier(k)
        await asyncio.wait_for(running, timeout)

    asyncio.run(scenario())


def test_a_barrier_waits_for_the_server(tmp_path):
    """At a barrier the run reports its index and goes on only once reachedBarrier gets there."""
    marker = tmp_path / "after"
    task = Task(tmp_path, [script("true"), {"barrier": {"name": "b"}}, script(f"touch {marker}")])

    held_at_barrier(task, 2, marker)
    assert task.record.state is TaskState.SUCCEEDED
    assert marker.exists()


def test_a_resumed_run_does_not_start_a_finished_runnable_again(tmp_path):
    """Runnables recorded as ended before a restart keep their result and are not rerun."""
    counter = tmp_path / "runs"
    first = Task(tmp_path, [script(f"echo x >> {counter}"), script("exit 4")])
    first.go()
    resumed = TaskRecord.from_json(json.dumps(first.recorder.saves[1]), raw={})
    assert resumed.runnables[1].exit_code == 0
    resumed.runnables.pop(2)  # as if the agent died before runnable 2's intent
    record = Task(tmp_path, [script(f"echo x >> {counter}"), script("exit 4")], resumed).go()
    assert counter.read_text() == "x\n"
    assert (record.state, record.exit_code) == (TaskState.FAILED, 4)


def test_a_script_task_never_loads_the_docker_sdk(tmp_path):
    """Script-only VMs never pay for the docker SDK, not even at a task's poststop."""
    program = (
        "import sys; from pathlib import Path; from tests.test_runner import Task, script; "
        f"Task(Path({str(tmp_path)!r}), [script('true')]).go(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'docker'))"
    )
    root = Path(__file__).parent.parent
    found = subprocess.run(
        [sys.executable, "-c", program], cwd=root, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]", found.stderr


class _Crash(Exception):
    """The agent dying, as far as one run can tell."""


class CrashAfterRunning(Recorder):
    """Keeps the save of ASSIGNED -> RUNNING, then dies before anything else happens."""

    async def transition(self, record: TaskRecord, new: TaskState, **details: Any) -> None:
        await super().transition(record, new, **details)
        if new is TaskState.RUNNING:
            raise _Crash


class CrashBeforeRunning(Recorder):
    """Dies as ASSIGNED -> RUNNING (with runnable 1's intent) is being saved: nothing saved."""

    async def transition(self, record: TaskRecord, new: TaskState, **details: Any) -> None:
        if new is TaskState.RUNNING:
            raise _Crash
        await super().transition(record, new, **details)


# A dead agent does not reap its waiters: the crashed run's Popen may be collected with its
# waiter running. Collected before the test ends (`gc.collect`), never in a later test.
_OUTLIVED = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_OUTLIVED
def test_a_crash_after_the_running_save_starts_nothing_twice(tmp_path):
    """RUNNING is saved with runnable 1's intent while it starts: an agent that dies right
    after that save leaves the RUNNING event on disk, and the next one finds runnable 1 by its
    status (it is not started again) and goes on with runnable 2."""
    counter = tmp_path / "runs"
    runnables = [script(f"echo x >> {counter}"), script(f"echo y >> {counter}")]
    first = Task(tmp_path, runnables, recorder=CrashAfterRunning())
    with pytest.raises(_Crash):
        first.go()
    [saved] = first.recorder.saves
    assert saved["state"] == "RUNNING" and saved["runnables"]["1"]["pid"] is None
    assert "ASSIGNED to RUNNING" in saved["events"][-1]["description"]
    resumed = TaskRecord.from_json(json.dumps(saved), raw={})
    record = Task(tmp_path, runnables, resumed).go()
    assert counter.read_text() == "x\ny\n"
    assert record.state is TaskState.SUCCEEDED
    assert record.runnables[1].exit_code == 0
    del first
    gc.collect()


@_OUTLIVED
def test_a_script_started_before_its_intent_was_saved_is_found_not_started_again(tmp_path):
    """A script starts while its intent is being saved: an agent that dies before that save
    lands leaves a record without the runnable (the task still ASSIGNED); the next one finds
    the run by its status file, records it (RUNNING first) and goes on."""
    counter = tmp_path / "runs"
    runnables = [script(f"echo x >> {counter}; exit 3", ignoreExitStatus=True), script("true")]
    first = Task(tmp_path, runnables, recorder=CrashBeforeRunning())
    with pytest.raises(_Crash):
        first.go()
    assert first.recorder.saves == []
    accepted = TaskRecord(task_id=NAME, raw={})  # the record as the task set saved it
    record = Task(tmp_path, runnables, accepted).go()
    assert counter.read_text() == "x\n"
    assert record.state is TaskState.SUCCEEDED
    assert (record.runnables[1].exit_code, record.runnables[2].exit_code) == (3, 0)
    assert "ASSIGNED to RUNNING" in record.events[0]["description"]
    del first
    gc.collect()


class SavesWhenRan(Recorder):
    """Each of the first two saves (the intents) waits (up to 10 s) until `marker` holds as
    many lines as saves before it plus one, and keeps what it held then: a runnable that waited
    for its save would never run."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker
        self.seen: list[str] = []

    async def persist(self, record: TaskRecord) -> None:
        wanted = len(self.seen) + 1
        for _ in range(1000 if wanted <= 2 else 0):
            text = self.marker.read_text() if self.marker.exists() else ""
            if len(text.splitlines()) >= wanted:
                break
            await asyncio.sleep(0.01)
        else:
            text = self.marker.read_text() if self.marker.exists() else ""
        self.seen.append(text)
        await super().persist(record)


def test_a_script_starts_while_its_intent_is_being_saved(tmp_path):
    """A script does not wait for its intent's save (a restarted agent finds an unrecorded
    start by its status file or waiter), but the next runnable starts only after it."""
    marker = tmp_path / "ran"
    recorder = SavesWhenRan(marker)
    runnables = [script(f"echo x >> {marker}"), script(f"echo y >> {marker}")]
    record = Task(tmp_path, runnables, recorder=recorder).go()
    assert record.state is TaskState.SUCCEEDED
    assert recorder.seen[:2] == ["x\n", "x\ny\n"]  # each save while its runnable ran
    assert marker.read_text() == "x\ny\n"


def test_the_next_runnables_files_are_made_while_the_one_before_runs(tmp_path):
    """Runnable 2's output files exist while runnable 1 still runs (its start then only opens
    them), and a runnable that never starts after a failure leaves only empty files behind."""
    folder = task_dir(tmp_path / "tasks", NAME)
    wait_for_next = (
        f"for i in $(seq 500); do [ -e {folder}/runnable-2.stdout ] && exit 0; sleep 0.01; done; "
        "exit 1"
    )
    runnables = [script(wait_for_next), script("echo two; exit 3"), script("echo never")]
    task = Task(tmp_path, runnables)
    record = task.go()
    assert record.state is TaskState.FAILED and record.runnables[2].exit_code == 3
    assert task.lines == ["two"]
    assert 3 not in record.runnables  # never started: at most its empty files are left
    leftover = [p for p in folder.glob("runnable-3.*") if p.stat().st_size]
    assert not leftover


def test_a_barrier_first_saves_running_on_its_own(tmp_path):
    """With no intent to carry it, RUNNING is saved before the task waits at a barrier."""
    task = Task(tmp_path, [{"barrier": {}}, script("exit 0")])
    task.run.update_barrier(1)
    record = task.go()
    assert record.state is TaskState.SUCCEEDED
    assert task.recorder.states == ["RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"]
    assert task.recorder.saves[0]["runnables"] == {}


def test_run_time_is_the_sum_of_runnable_run_times(tmp_path):
    """Three runnables running together use maxRunDuration three times as fast (Batch's "set
    timeouts" page): the task fails 50005 long before that much wall time has passed."""
    task = Task(
        tmp_path,
        [
            script("exec sleep 60", background=True),
            script("exec sleep 60", background=True),
            script("exec sleep 60"),
        ],
        spec={"maxRunDuration": "1.5s"},
    )
    record = task.go()
    assert (record.state, record.exit_code) == (TaskState.FAILED, 50005)
    assert task.detail_event == "Exit code 50005: maxRunDuration 1.5s exceeded."
    spans = [
        (parse_time(r.started_at), parse_time(r.ended_at))
        for r in record.runnables.values()
        if r.started_at and r.ended_at
    ]
    assert len(spans) == 3
    assert sum((end - start for start, end in spans), timedelta(0)) >= timedelta(seconds=1.5)
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    assert wall < timedelta(seconds=1.5)  # the three spans overlapped


def test_a_background_timeout_fails_the_task_and_stops_all_runnables(tmp_path):
    """A background runnable over its own timeout fails the task with 50005 and stops the
    foreground too; alwaysRun runnables still run."""
    marker = tmp_path / "cleanup"
    task = Task(
        tmp_path,
        [
            script("exec sleep 60", background=True, timeout="0.3s"),
            script("exec sleep 60"),
            script(f"touch {marker}", alwaysRun=True),
        ],
    )
    record = task.go()
    assert (record.state, record.exit_code) == (TaskState.FAILED, 50005)
    assert task.detail_event == "Exit code 50005: runnables[0].timeout 0.3s exceeded."
    assert record.runnables[2].exit_code == 143  # stopped with SIGTERM
    assert marker.exists()


@pytest.mark.parametrize("executable", [True, False], ids=["exec", "noexec"])
def test_statuses_go_to_the_runtime_dir_and_scripts_only_where_they_may_run(tmp_path, executable):
    """Exit statuses go to the task's folder in the runtime dir; its scripts too, unless that
    is mounted noexec (as /run often is): then they stay in the state dir's folder."""
    runtime = tmp_path / "run" / "tasks"
    settings = {"runtime": runtime, "runtime_exec": executable}
    record = Task(tmp_path, [script("echo $0")], settings=settings).go()
    assert record.state is TaskState.SUCCEEDED and record.runtime == str(runtime)
    folder, in_runtime = task_dir(tmp_path / "tasks", NAME), task_dir(runtime, NAME)
    assert (in_runtime / "runnable-1.status").read_text() == "0\n"
    assert not (folder / "runnable-1.status").exists()
    scripts = in_runtime if executable else folder
    program = Path((folder / "runnable-1.stdout").read_text().strip())
    assert program.parent == scripts and program.is_file()


def test_the_deadline_watch_ends_when_cancelled_as_a_runnable_ends():
    """A runnable's end wakes the deadline watch just as the run cancels it: the watch ends
    (asyncio.wait_for on Python 3.11 swallowed that cancel, and the task never finished: one
    `local` run of examples/hello-world.json in three hung)."""
    spec = {"runnables": [script("true")], "maxRunDuration": "60s"}  # the watch has a timeout
    plan = make_plan(AgentTask.from_wire({"task": NAME, "spec": spec}))
    record = TaskRecord(task_id=NAME, raw={})
    record.runnables[1] = RunnableRecord(started_at=format_time(datetime.now(UTC)))

    async def go() -> None:
        deadlines = Deadlines(plan, record, lambda: datetime.now(UTC))
        deadlines.started(plan.runnables[0])
        watch = asyncio.create_task(deadlines.watch())
        await asyncio.sleep(0.01)  # it waits for a change, or maxRunDuration
        record.runnables[1].ended_at = format_time(datetime.now(UTC))  # as `finished` does
        deadlines.ended(plan.runnables[0])
        watch.cancel()
        done, _ = await asyncio.wait({watch}, timeout=2)
        assert watch in done and watch.cancelled()

    asyncio.run(go())


def test_the_next_runnables_waiter_waits_ahead_and_is_let_go_if_it_never_starts(tmp_path):
    """While runnable 1 runs, runnable 2's waiter is forked, waiting for its go (runnable 1
    sees it by its command line); runnable 1 then fails, so runnable 2 never starts: its
    waiter is let go when the sequence ends, having run and recorded nothing, and reaped."""
    marker = tmp_path / "ran"
    see_waiter_2 = (  # prints its /proc/PID/cmdline path
        "for i in $(seq 500); do "
        "grep -l -a -e 'runnable-2[.]status' /proc/[0-9]*/cmdline 2>/dev/null && exit 3; "
        "sleep 0.01; done; exit 1"
    )
    task = Task(tmp_path, [script(see_waiter_2), script(f"touch {marker}")])
    record = task.go()
    assert (record.state, record.exit_code) == (TaskState.FAILED, 3)  # 3: it saw the waiter
    assert 2 not in record.runnables and not marker.exists()
    assert not list(tmp_path.rglob("runnable-2.status"))
    (seen,) = task.lines
    assert procfs.read_stat(int(seen.split("/")[2])) is None  # not waiting, and reaped
