"""The state dir under faults: the real agent against the emulator with a state dir that other
users must not read, that fills up, that holds a corrupt database, or that two agents share."""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import exit_code, fill, final_event, job, script, tmpfs, wait_until

TASK0 = "projects/123456789012/locations/us-central1/jobs/job-1/taskGroups/group0/tasks/0"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def agent_task(*runnables: dict[str, object], **spec: object) -> dict[str, object]:
    return {"intendedState": "ASSIGNED", "agentTaskSpec": {"runnables": list(runnables), **spec}}


def stored_states(db: Path) -> dict[str, str]:
    """task id -> state, as the agent's database holds them (read once the agent has exited)."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT task_id, record FROM tasks").fetchall()
    finally:
        conn.close()
    return {task_id: json.loads(record)["state"] for task_id, record in rows}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted where the agent's state dir goes (tmp_path/state)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    with tmpfs(tmp_path / "state", "2m") as mount:
        yield mount


def test_state_dir_is_private_yet_a_user_task_reaches_its_folder(
    make_emulator, start_agent, tmp_path, batch_user: pwd.struct_passwd
):
    """Other users can neither read the database (secrets) nor list tasks/, and an existing
    0755 dir and 0644 database are tightened; a userAccount task still runs in its folder."""
    out = tmp_path / "out"
    for folder in (tmp_path, *tmp_path.parents[:2]):  # pytest's temp dirs are root's 0700
        folder.chmod(folder.stat().st_mode | 0o711)
    tmp_path.chmod(0o777)
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    sqlite3.connect(state / "state.db").close()  # as an older agent left it
    (state / "state.db").chmod(0o644)
    emu = make_emulator(None)
    checks = (
        f"cat {state}/state.db >/dev/null 2>&1 && echo db-readable >> {out}; "
        f"ls {state}/tasks >/dev/null 2>&1 && echo tasks-listable >> {out}; "
        f'echo "ran as $(id -u) in $(basename "$PWD")" >> {out}'
    )
    user = {"uid": str(batch_user.pw_uid), "gid": str(batch_user.pw_gid)}
    name = emu.add_task(agent_task(script(checks), userAccount=user))
    agent = start_agent(emu)
    wait_until(lambda: emu.task_state(name) == "SUCCEEDED", 60, what=f"{name} SUCCEEDED")
    assert out.read_text() == f"ran as {batch_user.pw_uid} in work\n"  # the user's own folder
    assert mode(state) == 0o711
    assert mode(state / "tasks") == 0o711
    files = [p for p in state.iterdir() if p.name.startswith("state.db")]
    assert {p.name for p in files} >= {"state.db", "state.db-wal"}
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    as_user = subprocess.run(
        ["cat", str(state / "state.db")], user=batch_user.pw_uid, capture_output=True, check=False
    )
    assert as_user.returncode != 0 and b"Permission denied" in as_user.stderr
    assert agent.terminate() == 0, agent.log()


def test_a_full_state_dir_fails_new_tasks_and_recovers(make_emulator, start_agent, small_disk):
    """While the state dir is full the agent stays up and reports, a running task's end is
    reported from memory, a new task fails with 50000 naming the full disk; once there is
    space again a new task runs and the records that could not be saved are saved."""
    flag = small_disk.parent / "go"
    emu = make_emulator(None, auto_delete=False)  # the records stay, to be read at the end
    agent = start_agent(emu)
    running = emu.add_task(agent_task(script(f"while [ ! -e {flag} ]; do sleep 0.1; done")))
    wait_until(lambda: emu.task_state(running) == "RUNNING", 60, what="the first task RUNNING")
    filler = fill(small_disk)
    flag.touch()
    wait_until(lambda: emu.task_state(running) == "SUCCEEDED", 60, what="SUCCEEDED while full")

    refused = emu.add_task(agent_task(script("true")))
    wait_until(lambda: emu.task_state(refused) == "FAILED", 60, what="the new task FAILED")
    assert exit_code(emu, refused) == 50000
    description = final_event(emu, refused)["description"]
    assert f"the agent cannot record the task: no space left in {small_disk}" in description
    count = len(emu.reports)
    wait_until(lambda: len(emu.reports) >= count + 2, 30, what="reports while full")
    assert agent.proc.poll() is None, agent.log()

    filler.unlink()
    after = emu.add_task(agent_task(script("true")))
    wait_until(lambda: emu.task_state(after) == "SUCCEEDED", 60, what="a task after the space")
    assert agent.terminate() == 0, agent.log()
    assert stored_states(small_disk / "state.db") == {
        running: "SUCCEEDED",
        refused: "FAILED",
        after: "SUCCEEDED",
    }
    assert emu.invalid_reports == []


def test_an_agent_restarted_on_a_full_state_dir_stays_up(make_emulator, start_agent, small_disk):
    """An agent started on a full state dir reads its records, reports, fails a new task with
    50000, and runs tasks again once there is space (no crash loop)."""
    emu = make_emulator(None, auto_delete=False)
    agent = start_agent(emu)
    done = emu.add_task(agent_task(script("true")))
    wait_until(lambda: emu.task_state(done) == "SUCCEEDED", 60, what="a task before the fill")
    assert agent.terminate() == 0, agent.log()
    filler = fill(small_disk)
    agent = start_agent(emu)
    count = len(emu.reports)
    wait_until(lambda: len(emu.reports) >= count + 3, 30, what="reports while full")
    assert emu.reports[-1].body["agentInfo"]["tasks"][0]["taskId"] == done
    refused = emu.add_task(agent_task(script("true")))
    wait_until(lambda: emu.task_state(refused) == "FAILED", 60, what="the new task FAILED")
    assert exit_code(emu, refused) == 50000
    assert agent.proc.poll() is None, agent.log()
    filler.unlink()
    after = emu.add_task(agent_task(script("true")))
    wait_until(lambda: emu.task_state(after) == "SUCCEEDED", 60, what="a task after the space")
    assert agent.terminate() == 0, agent.log()
    assert emu.invalid_reports == []


def test_a_corrupt_database_is_set_aside(make_emulator, start_agent, tmp_path):
    """A state.db of garbage is renamed state.db.corrupt-<time> (kept, logged) and the agent
    starts with an empty store and runs its task."""
    state = tmp_path / "state"
    state.mkdir()
    garbage = b"this is not an sqlite database\n" * 200
    (state / "state.db").write_bytes(garbage)
    emu = make_emulator(job(script("true")))
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 0, agent.log()
    assert emu.task_state(TASK0) == "SUCCEEDED"
    aside = list(state.glob("state.db.corrupt-*"))
    assert [p.read_bytes() for p in aside] == [garbage]
    assert f"set aside as {aside[0]}" in agent.log()


def test_a_second_agent_on_the_same_state_dir_exits_2(make_emulator, start_agent, tmp_path):
    """While one agent holds the state dir a second exits with status 2 and says why; the
    task runs once, and a task's processes never inherit the lock: after a kill -9 of the
    first agent a new one takes the state dir over while the task still runs."""
    out = tmp_path / "out"
    emu = make_emulator(job(script(f"echo run >> {out}; sleep 3")))
    first = start_agent(emu)
    wait_until(lambda: out.exists(), 60, what="the task started")
    second = start_agent(emu, state="state")
    assert second.wait(60) == 2
    assert f"in use by another agent (pid {first.proc.pid})" in second.log()
    first.kill()
    third = start_agent(emu)
    wait_until(lambda: emu.task_state(TASK0) == "SUCCEEDED", 60, what="SUCCEEDED")
    assert third.proc.poll() is None, third.log()
    assert out.read_text() == "run\n"
    assert third.terminate() == 0
