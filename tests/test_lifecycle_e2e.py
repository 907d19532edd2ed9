"""The agent's lifecycle end to end: the real `batch-agent run` against the emulator over HTTP.

A control plane that rejects a report for good, a deleted task slow to die beside a live one,
and task names in the form Google's agent logs show.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest

from batch_agent.emulator import Emulator
from tests.helpers import AgentProcess, alive, exit_code, final_event, job, script, wait_until

pytestmark = pytest.mark.timeout(180)

EXIT_REJECTED = 4  # batch_agent.cli.EXIT_REJECTED, part of the command line's contract
TASK = "projects/123456789012/locations/us-central1/jobs/job-1/taskGroups/group0/tasks/{}"
KILL_GRACE = 10.0  # seconds: long enough that a report loop waiting on it would show a gap


def test_once_exits_4_when_the_control_plane_rejects_a_report(make_emulator, start_agent):
    """A 400 to a report ends `run --once` with exit 4 and a log line naming the error."""
    emu = make_emulator(job(script("true")))
    emu.fail_next(1, status=400)
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == EXIT_REJECTED, agent.log()
    log = agent.log()
    assert "rejected" in log, log
    assert "emulated failure (HTTP 400)" in log, log


def test_daemon_exits_4_when_the_control_plane_rejects_a_report(make_emulator, start_agent):
    """The daemon (`run` without --once) also exits 4 on a 400 instead of retrying for ever."""
    emu = make_emulator(None)
    agent = start_agent(emu)
    wait_until(lambda: len(emu.reports) >= 2, what="the daemon reporting")
    emu.fail_next(1, status=400)
    assert agent.wait(60) == EXIT_REJECTED, agent.log()
    assert "emulated failure (HTTP 400)" in agent.log()


def two_tasks_one_vm(tmp_path) -> dict[str, Any]:
    """Task 0 ignores SIGTERM and sleeps; task 1 runs until the file `go` appears."""
    text = (
        'if [ "$BATCH_TASK_INDEX" = 0 ]; then '
        f"trap '' TERM; echo $$ > {tmp_path / 'a.pid'}; sleep 1000; "
        f"else while [ ! -e {tmp_path / 'go'} ]; do sleep 0.05; done; fi"
    )
    return {
        "taskGroups": [
            {"taskCount": 2, "taskCountPerNode": 2, "taskSpec": {"runnables": [script(text)]}}
        ]
    }


@pytest.mark.parametrize("withdraw", ["delete_task", "cancel_task"])
def test_a_task_slow_to_die_does_not_hold_up_reports(
    make_emulator: Callable[..., Emulator],
    start_agent: Callable[..., AgentProcess],
    tmp_path,
    withdraw: str,
):
    """While a withdrawn task that ignores SIGTERM waits out its kill grace, reports keep their
    cadence and the other task's end on the same VM is reported before that grace is over."""
    emu = make_emulator(two_tasks_one_vm(tmp_path))
    a, b = TASK.format(0), TASK.format(1)
    agent = start_agent(emu, BATCH_AGENT_KILL_GRACE=str(KILL_GRACE))
    wait_until(
        lambda: emu.task_state(a) == emu.task_state(b) == "RUNNING", what="both tasks RUNNING"
    )
    pid_a = int(wait_until(lambda: (tmp_path / "a.pid").read_text().strip(), what="a.pid"))

    began = time.monotonic()
    getattr(emu, withdraw)(a)
    seen = len(emu.reports)
    # the answer to the second report from now on certainly carried the withdrawal
    wait_until(lambda: len(emu.reports) >= seen + 2, what="the withdrawal sent")
    (tmp_path / "go").touch()
    wait_until(lambda: emu.task_state(b) == "SUCCEEDED", timeout=KILL_GRACE, what="B SUCCEEDED")
    assert alive(pid_a), "B's end was reported only once A's teardown was over"
    wait_until(lambda: not alive(pid_a), timeout=KILL_GRACE + 30, what="A killed")
    ended = time.monotonic()
    assert ended - began >= KILL_GRACE * 0.9, "A died before its grace: SIGTERM was not ignored"

    points = [began, *(r.time for r in emu.reports if began < r.time < ended), ended]
    gaps = [later - earlier for earlier, later in itertools.pairwise(points)]
    # Reports are due every second; a loop waiting on A's grace would leave a gap of ~10 s.
    assert max(gaps) < KILL_GRACE / 2, gaps
    if withdraw == "cancel_task":
        wait_until(lambda: emu.task_state(a) == "FAILED", what="A FAILED")
        assert "cancelled" in final_event(emu, a)["description"]
    assert exit_code(emu, b) == 0
    assert agent.terminate() == 0


@pytest.mark.parametrize(
    ("name", "index", "attempt"),
    [
        ("task/j-3f2a9c1e-7b4d-4e21-9a0c-5d6e7f8a9b0c-group0-2/1/0", "2", "1"),
        ("task/j-0a1b2c3d-group0-0/0/0", "0", "0"),
    ],
)
def test_agent_form_task_names_set_index_and_retry_attempt(
    make_emulator, start_agent, tmp_path, name, index, attempt
):
    """A task named `task/JOB_UID-group0-INDEX/RETRIES/0` runs with BATCH_TASK_INDEX=INDEX and
    BATCH_TASK_RETRY_ATTEMPT=RETRIES."""
    out = tmp_path / "env"
    emu = make_emulator(None)
    text = f'echo "$BATCH_TASK_INDEX $BATCH_TASK_RETRY_ATTEMPT" > {out}'
    assert emu.add_task({"task": name, "spec": {"runnables": [script(text)]}}) == name
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 0, agent.log()
    assert out.read_text().split() == [index, attempt]
    assert emu.task_state(name) == "SUCCEEDED"
