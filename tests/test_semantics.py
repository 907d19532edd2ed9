"""Runnable semantics Batch documents, end to end: the real agent, real processes, the emulator."""

from __future__ import annotations

import os
import time
from datetime import datetime

import pytest

from tests.helpers import (
    WatchedEmulator,
    alive,
    exit_code,
    final_event,
    job,
    script,
    wait_until,
    wait_until_shipped_and_saved,
)

pytestmark = pytest.mark.timeout(180)

# Tasks' resource names: the emulator finds a task by it (the agent sees `task/JOB_UID-...`).
TASK = "projects/123456789012/locations/us-central1/jobs/job-1/taskGroups/group0/tasks/{}"
TASK0 = TASK.format(0)


def event_time(event: dict) -> float:
    return datetime.fromisoformat(event["eventTime"].replace("Z", "+00:00")).timestamp()


def reserved_failure(emu, code: int, reason: str, before: str = "RUNNING") -> str:
    """Google's documented FAILED sentence for a reserved exit code, on the emulator's VM 0."""
    where = f"zones/{emu.site.zone}/instances/{emu.vms[0].instance_id}"
    return (
        f"Task state is updated from {before} to FAILED on {where} due to {reason}"
        f" with exit code {code}."
    )


def last_two(emu, name: str) -> list[str]:
    """The descriptions of the task's last two events: our detail, then Google's sentence."""
    return [e["description"] for e in emu.task_events(name)[-2:]]


def test_background_is_stopped_after_the_foreground(make_emulator, start_agent, tmp_path):
    """A background runnable still alive when the foreground ends is stopped; not a failure."""
    pid_file = tmp_path / "pid"
    emu = make_emulator(
        job(
            script(f"echo $$ > {pid_file}; exec sleep 300", background=True),
            script(f"while [ ! -s {pid_file} ]; do sleep 0.05; done"),  # the background is up
        )
    )
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 0, agent.log()
    assert emu.task_state(TASK0) == "SUCCEEDED"
    assert not alive(int(pid_file.read_text()))


def test_a_failed_background_fails_the_task_only_if_nothing_else_did(
    make_emulator, start_agent, tmp_path
):
    """A background exiting non-zero on its own fails an otherwise good task with its code."""
    waiter = tmp_path / "waiter"
    # The foreground ends only once the background's waiter (its parent) was reaped by the agent,
    # plus a margin for the agent's look for leftovers of its session before it notes the exit.
    emu = make_emulator(
        job(
            script(f"echo $PPID > {waiter}; exit 6", background=True),
            script(
                f"while [ ! -s {waiter} ]; do sleep 0.05; done; "
                f'while kill -0 "$(cat {waiter})" 2>/dev/null; do sleep 0.05; done; sleep 1'
            ),
        )
    )
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 1, agent.log()
    assert exit_code(emu, TASK0) == 6


def test_runnable_timeout_fails_with_50005_and_always_run_still_runs(
    make_emulator, start_agent, tmp_path
):
    """A runnable over its timeout is killed; 50005 in Google's words, our event before it says
    which limit fired; alwaysRun runs."""
    cleanup = tmp_path / "cleanup"
    emu = make_emulator(
        job(script("sleep 60", timeout="1s"), script(f"touch {cleanup}", alwaysRun=True))
    )
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 1, agent.log()
    assert exit_code(emu, TASK0) == 50005
    assert last_two(emu, TASK0) == [
        "Exit code 50005: runnables[0].timeout 1s exceeded.",
        reserved_failure(emu, 50005, "task runs over the maximum runtime"),
    ]
    assert cleanup.exists()


def test_max_run_duration_skips_always_run(make_emulator, start_agent, tmp_path):
    """Once maxRunDuration expired nothing starts, not even alwaysRun runnables."""
    cleanup = tmp_path / "cleanup"
    emu = make_emulator(
        job(
            script("sleep 60"),
            script(f"touch {cleanup}", alwaysRun=True),
            maxRunDuration="1.5s",
        )
    )
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 1, agent.log()
    assert exit_code(emu, TASK0) == 50005
    assert last_two(emu, TASK0) == [
        "Exit code 50005: maxRunDuration 1.5s exceeded.",
        reserved_failure(emu, 50005, "task runs over the maximum runtime"),
    ]
    assert not cleanup.exists()


def test_max_run_duration_survives_an_agent_restart(make_emulator, start_agent, tmp_path):
    """maxRunDuration counts from the persisted start: a budget spent while the agent was down
    fails the task once it is back, without a fresh budget."""
    budget = 6.0
    started = tmp_path / "started"
    emu = make_emulator(job(script(f"touch {started}; sleep 60"), maxRunDuration=f"{budget:g}s"))
    first = start_agent(emu)
    wait_until(lambda: emu.task_state(TASK0) == "RUNNING", what="RUNNING (its start persisted)")
    wait_until(started.exists, what="task started")
    first.kill()
    running_at = event_time(emu.task_events(TASK0)[0])
    wait_until(
        lambda: time.time() > running_at + budget + 0.5,
        timeout=budget + 30,
        what="the budget spent while the agent is down",
    )
    restarted = time.time()
    second = start_agent(emu)
    wait_until(lambda: emu.task_state(TASK0) == "FAILED", timeout=60, what="FAILED")
    events = emu.task_events(TASK0)
    assert events[-1]["taskExecution"]["exitCode"] == 50005
    assert events[-2]["description"] == f"Exit code 50005: maxRunDuration {budget:g}s exceeded."
    # A budget counted afresh from the restart could not have run out before this.
    waited = event_time(events[-1]) - restarted
    assert waited < budget, f"the restart reset the budget: FAILED {waited:.1f}s after it"
    assert second.terminate() == 0


def test_cancel_escalates_to_sigkill(make_emulator, start_agent, tmp_path):
    """A runnable that ignores SIGTERM is killed after the grace period when cancelled."""
    pid_file = tmp_path / "pid"
    emu = make_emulator(
        job(script(f"trap '' TERM; echo $$ > {pid_file}; while :; do sleep 1; done"))
    )
    agent = start_agent(emu)
    wait_until(pid_file.exists, what="started")
    emu.cancel_task(TASK0)
    wait_until(lambda: emu.task_state(TASK0) == "FAILED", timeout=30, what="FAILED")
    assert "task was cancelled" in final_event(emu, TASK0)["description"]
    assert not alive(int(pid_file.read_text()))
    assert agent.terminate() == 0


def test_user_account_runs_scripts_as_that_user(make_emulator, start_agent, tmp_path, batch_user):
    """userAccount: the script runs with that uid/gid and HOME, and can read its own script."""
    out = tmp_path / "out"
    # pytest's temp dirs are 0700 (root's); the VM's state dir is 0755. Let the user through.
    for folder in (tmp_path, *tmp_path.parents[:2]):
        folder.chmod(folder.stat().st_mode | 0o711)
    tmp_path.chmod(0o777)
    emu = make_emulator(None)
    emu.add_task(
        {
            "intendedState": "ASSIGNED",
            "agentTaskSpec": {
                "runnables": [
                    {"script": {"text": f'echo "$(id -u) $(id -g) $HOME" > {out}; echo x'}},
                    # its own output files are readable by it (in the task folder, above its
                    # working directory `work/`)
                    {"script": {"text": 'cat "$PWD"/../runnable-1.stdout >&2'}},
                ],
                "userAccount": {"uid": str(batch_user.pw_uid), "gid": str(batch_user.pw_gid)},
            },
        }
    )
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 0, agent.log()
    assert out.read_text().split() == [
        str(batch_user.pw_uid),
        str(batch_user.pw_gid),
        batch_user.pw_dir,
    ]


def test_unknown_uid_fails_clearly(make_emulator, start_agent):
    """A uid that does not exist on the VM fails the task with an event saying so."""
    emu = make_emulator(None)
    name = emu.add_task(
        {
            "intendedState": "ASSIGNED",
            "agentTaskSpec": {
                "runnables": [{"script": {"text": "true"}}],
                "userAccount": {"uid": "4242424", "gid": "4242424"},
            },
        }
    )
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 1, agent.log()
    event = final_event(emu, name)
    assert "userAccount: uid 4242424 does not exist on this VM" in event["description"]
    assert event["taskExecution"]["exitCode"] == 50000


def test_display_name_and_custom_events(make_emulator, start_agent):
    """displayName adds start/finish events; a `batch/custom/event` JSON line adds its own."""
    emu = make_emulator(
        job(
            script(
                'echo \'{"batch/custom/event": "halfway there"}\'; exit 0', displayName="prepare"
            ),
            script("exit 2", displayName="compute"),
        )
    )
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 1, agent.log()
    descriptions = [e["description"] for e in emu.task_events(TASK0)]
    for expected in (
        'Runnable "prepare" started.',
        "halfway there",
        'Runnable "prepare" finished with exit code 0.',
        'Runnable "compute" started.',
        'Runnable "compute" finished with exit code 2.',
    ):
        assert expected in descriptions, descriptions
    assert descriptions.index("halfway there") < descriptions.index('Runnable "compute" started.')


def test_kill_9_ten_times_never_restarts_the_task(make_emulator, start_agent, tmp_path):
    """Ten kill -9s of the agent while a task runs: the same pid lives on, nothing starts twice,
    and the final exit code is the script's own."""
    runs, pid_file, go = tmp_path / "runs", tmp_path / "pid", tmp_path / "go"
    text = (
        f"echo run >> {runs}; echo $$ > {pid_file}; "
        f"while [ ! -e {go} ]; do echo tick; sleep 0.1; done; exit 9"
    )
    emu = make_emulator(job(script(text)))
    agent = start_agent(emu, state="state")
    # The shell makes the file before it writes the pid into it.
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="started")
    pid = int(pid_file.read_text())
    for _ in range(10):
        agent.kill()
        assert alive(pid)
        count = len(emu.reports)
        agent = start_agent(emu, state="state")
        wait_until(lambda count=count: len(emu.reports) > count, what="a report after restart")
    go.touch()
    wait_until(lambda: emu.task_state(TASK0) == "FAILED", what="FAILED")
    assert exit_code(emu, TASK0) == 9
    assert runs.read_text() == "run\n"
    assert agent.terminate() == 0


def test_reboot_fails_unfinished_tasks_with_50003(make_emulator, start_agent, tmp_path):
    """A new bootTime with an unfinished task means the VM rebooted: the task fails with 50003,
    in Google's words."""
    stat = tmp_path / "stat"
    stat.write_text("cpu 1 2 3\nbtime 1700000000\n")
    started = tmp_path / "started"
    emu = make_emulator(job(script(f"touch {started}; sleep 60")))
    agent = start_agent(emu, BATCH_AGENT_PROC_STAT=str(stat))
    wait_until(started.exists, what="started")
    agent.kill()
    stat.write_text("cpu 1 2 3\nbtime 1700000500\n")
    agent = start_agent(emu, BATCH_AGENT_PROC_STAT=str(stat))
    wait_until(lambda: emu.task_state(TASK0) == "FAILED", what="FAILED")
    assert exit_code(emu, TASK0) == 50003
    assert last_two(emu, TASK0) == [
        "Exit code 50003: the VM booted again since the task was started.",
        reserved_failure(emu, 50003, "VM is rebooted during task execution"),
    ]
    assert agent.terminate() == 0


def test_preemption_notice_is_reported_at_once(make_emulator, start_agent, tmp_path):
    """instance/preempted TRUE is reported at once, not at the next interval, and the kill that
    follows is reported as preemption (50001, in Google's words), not as the user's failure."""
    pid_file = tmp_path / "pid"
    interval = 60.0  # the next idle report, far later than any early one
    emu = make_emulator(
        job(script(f"echo $$ > {pid_file}; exec sleep 60")),
        kind=WatchedEmulator,
        default_report_interval=f"{interval:g}s",
        min_report_interval="1s",
    )
    agent = start_agent(emu)
    wait_until(lambda: emu.task_state(TASK0) == "RUNNING", what="RUNNING")
    wait_until(lambda: emu.preemption_polls >= 1, what="the preemption watch in place")
    emu.set_preempted(0, True)
    report = wait_until(
        lambda: next(
            (r for r in emu.reports if r.body["metadata"].get("instancePreemptionNoticeReceived")),
            None,
        ),
        timeout=interval / 2,
        what="preemption reported",
    )
    before = emu.reports[emu.reports.index(report) - 1]
    assert report.time - before.time < interval, "reported with the idle cadence, not at once"
    os.kill(int(pid_file.read_text()), 9)  # what the VM's shutdown would do
    wait_until(lambda: emu.task_state(TASK0) == "FAILED", what="FAILED")
    assert exit_code(emu, TASK0) == 50001
    assert last_two(emu, TASK0) == [
        "Exit code 50001: the VM got its preemption notice.",
        reserved_failure(emu, 50001, "Spot Preemption"),
    ]
    assert agent.terminate() == 0


def test_two_agents_pass_two_barriers_together(make_emulator, start_agent, tmp_path):
    """MPI-style: two VMs, one task each; nobody passes a barrier before both reached it, even
    when one side is slow."""
    log = tmp_path / "log"
    step = 'echo "$BATCH_TASK_INDEX {} $(date +%s.%N)" >> ' + str(log)
    slow = 'if [ "$BATCH_TASK_INDEX" = 1 ]; then sleep 1.5; fi; '
    config = {
        "taskGroups": [
            {
                "taskCount": 2,
                "taskCountPerNode": 1,
                "taskSpec": {
                    "runnables": [
                        script(slow + step.format("a")),
                        {"barrier": {"name": "first"}},
                        script(slow + step.format("b")),
                        {"barrier": {"name": "second"}},
                        script(step.format("c")),
                    ]
                },
            }
        ]
    }
    emu = make_emulator(config, vms=2, min_report_interval="0.1s", default_report_interval="0.5s")
    agents = [start_agent(emu, "--once", state=f"vm{i}", vm=i) for i in range(2)]
    for agent in agents:
        assert agent.wait(60) == 0, agent.log()
    entries = [line.split() for line in log.read_text().splitlines()]
    when = {(task, phase): float(t) for task, phase, t in entries}
    assert max(when["0", "a"], when["1", "a"]) < min(when["0", "b"], when["1", "b"])
    assert max(when["0", "b"], when["1", "b"]) < min(when["0", "c"], when["1", "c"])
    assert emu.task_runnable(TASK.format(0)) == 5


def test_output_is_shipped_once_across_an_agent_restart(make_emulator, start_agent, tmp_path):
    """A reattached runnable's output goes on from the recorded offset: no line twice."""
    go = tmp_path / "go"
    text = f"echo before; while [ ! -e {go} ]; do sleep 0.05; done; echo after"
    emu = make_emulator(job(script(text)))
    first = start_agent(emu)
    wait_until(lambda: "[task 0 r1 stdout] before" in first.log(), what="first line shipped")
    wait_until_shipped_and_saved(tmp_path / "state", len("before\n"))
    first.kill()
    second = start_agent(emu, state="state")
    wait_until(lambda: "reattaching" in second.log(), what="reattached")
    go.touch()
    wait_until(lambda: emu.task_state(TASK0) == "SUCCEEDED", what="SUCCEEDED")
    assert second.terminate() == 0
    log = second.log()
    assert log.count("[task 0 r1 stdout] after") == 1
    assert "[task 0 r1 stdout] before" not in log.split("reattaching", 1)[1]
