"""`batch-agent status` and `batch-agent logs`: read-only views of a live and a stopped agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.helpers import AGENT, job, script, wait_until


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_AGENT_")}
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, env=env, timeout=60)


def status(state: Path) -> dict:
    found = cli("status", "--state-dir", str(state), "--json")
    assert found.returncode == 0, found.stderr
    return json.loads(found.stdout)


def test_status_and_logs_of_a_live_agent(make_emulator, start_agent, tmp_path):
    """While a task runs: the agent is running, the task shows its pid, and logs has its lines."""
    emu = make_emulator(job(script("echo hello; echo oops >&2; sleep 60"), script("true")))
    agent = start_agent(emu)
    state = tmp_path / "state"

    def running_task():
        if not (state / "state.db").exists():
            return None
        tasks = status(state)["tasks"]
        runnables = tasks[0]["runnables"] if tasks else []
        return runnables and runnables[0]["alive"] and tasks[0]

    task = wait_until(running_task, what="the task RUNNING in status")
    found = status(state)
    assert found["agent"]["state"] == "running"
    assert found["agent"]["pid"] == agent.proc.pid
    assert wait_until(lambda: status(state)["agent"]["last_report"])["outcome"] == "ok"
    assert task["task"] == emu.task_names()[0] and task["index"] == 0 and task["runnable"] == 1
    assert task["state"] == "RUNNING" and task["runnables"][0]["pid"]
    assert found["mounts"] == [] and found["secrets"] == []
    wait_until(lambda: "oops" in cli("logs", "0", "--state-dir", str(state)).stdout)
    logs = cli("logs", "0", "--state-dir", str(state))
    assert logs.stdout.splitlines() == ["[r1 stdout] hello", "[r1 stderr] oops"]
    text = cli("status", "--state-dir", str(state))
    assert "agent: running (pid" in text.stdout and "task 0: RUNNING" in text.stdout, text.stdout
    assert agent.terminate() == 0


def test_status_and_logs_of_a_stopped_agent(make_emulator, start_agent, tmp_path):
    """After the agent stopped (its task runs on): read from its db, with exit codes and sizes."""
    emu = make_emulator(
        job(script("echo one; exit 3", ignoreExitStatus=True), script("echo two; sleep 60"))
    )
    agent = start_agent(emu)
    state = tmp_path / "state"

    def second_runnable_alive():
        if not (state / "state.db").exists():
            return None
        tasks = status(state)["tasks"]
        runnables = tasks[0]["runnables"] if tasks else []
        return len(runnables) == 2 and runnables[1]["alive"] and runnables[1]["pid"]

    pid = wait_until(second_runnable_alive, what="runnable 2 running")
    try:
        assert agent.terminate() == 0
        found = status(state)
        assert found["agent"]["state"] == "stopped" and found["agent"]["stopped"]
        [task] = found["tasks"]
        assert task["state"] == "RUNNING" and task["exit_code"] is None
        assert [r["exit_code"] for r in task["runnables"]] == [3, None]
        assert task["runnables"][0]["output_bytes"] == {"stdout": 4, "stderr": 0}
        assert task["duration_seconds"] is not None
        task0 = emu.task_names()[0]  # as the agent got it, the documented agent form
        logs = cli("logs", task0, "--state-dir", str(state), "--json")
        lines = [json.loads(line) for line in logs.stdout.splitlines()]
        assert [(x["runnable"], x["line"]) for x in lines] == [(1, "one"), (2, "two")]
        assert all(x["task"] == task0 for x in lines)
        only = cli("logs", "0", "--runnable", "2", "--state-dir", str(state))
        assert only.stdout == "[r2 stdout] two\n"
        text = cli("status", "--state-dir", str(state)).stdout
        assert "agent: not running (last pid" in text and "task 0: RUNNING" in text, text
        assert "runnable 1: pid" in text and "exit code 3; stdout 4B, stderr 0B" in text, text
        # Runnable 2's pid is not asserted: the runner saves a script's pid with its next save.
    finally:
        os.killpg(pid, signal.SIGKILL)  # the script leads its own session and group


def test_follow_streams_until_the_task_ends(make_emulator, start_agent, tmp_path):
    """`logs -f` prints lines as they come and returns once the task has ended."""
    gate = tmp_path / "gate"
    emu = make_emulator(
        job(script(f"echo first; while [ ! -e {gate} ]; do sleep 0.1; done; printf last"))
    )
    agent = start_agent(emu)
    state = tmp_path / "state"
    wait_until(lambda: "first" in cli("logs", "0", "--state-dir", str(state)).stdout)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_AGENT_")}
    follow = subprocess.Popen(
        [*AGENT, "logs", "0", "-f", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "[r1 stdout] first\n"
        gate.touch()
        out, _ = follow.communicate(timeout=60)
        assert out == "[r1 stdout] last\n"  # an unterminated last line too
        assert follow.returncode == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert agent.terminate() == 0


def test_unknown_task_and_missing_state(tmp_path, make_emulator, start_agent):
    """A missing state dir or an unknown task is a clear error with exit status 1."""
    missing = cli("status", "--state-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "no agent state" in missing.stderr
    emu = make_emulator(job(script("true")))
    assert start_agent(emu, "--once").wait() == 0
    unknown = cli("logs", "7", "--state-dir", str(tmp_path / "state"))
    assert unknown.returncode == 1 and "no task '7'" in unknown.stderr
