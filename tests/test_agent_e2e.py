"""End to end: the real `batch-agent run` subprocess against the emulator over HTTP."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest

from batch_agent import REPORTED_VERSION, __version__
from batch_agent.emulator import tasknames
from tests.helpers import AGENT, alive, exit_code, final_event, job, script, wait_until

# The Task's resource name: the emulator finds a task by it (the agent sees `task/JOB_UID-...`).
TASK0 = "projects/123456789012/locations/us-central1/jobs/job-1/taskGroups/group0/tasks/0"


def run_once(make_emulator, start_agent, config, timeout=60):
    emu = make_emulator(config)
    agent = start_agent(emu, "--once")
    status = agent.wait(timeout)
    return emu, agent, status


def test_success_reports_running_then_succeeded(make_emulator, start_agent, tmp_path):
    """Two runnables run in order and the task reports RUNNING then SUCCEEDED with events."""
    out = tmp_path / "out"
    emu, agent, status = run_once(
        make_emulator,
        start_agent,
        job(script(f"echo one >> {out}"), script(f"echo two >> {out}")),
    )
    assert status == 0, agent.log()
    assert out.read_text() == "one\ntwo\n"
    events = emu.task_events(TASK0)
    assert [e["taskState"] for e in events] == ["RUNNING", "SUCCEEDED"]
    assert events[-1]["description"].startswith(
        "Task state is updated from RUNNING to SUCCEEDED on zones/us-central1-a/instances/"
    )
    assert emu.task_runnable(TASK0) == 2
    assert emu.invalid_reports == []


def test_failure_stops_later_runnables(make_emulator, start_agent, tmp_path):
    """The first failing runnable's exit code fails the task and later runnables never start."""
    marker = tmp_path / "marker"
    emu, _agent, status = run_once(
        make_emulator, start_agent, job(script("exit 3"), script(f"touch {marker}"))
    )
    assert status == 1
    assert emu.task_state(TASK0) == "FAILED"
    assert exit_code(emu, TASK0) == 3
    assert final_event(emu, TASK0)["description"].endswith("with exit code 3.")
    assert not marker.exists()


def test_ignore_exit_status(make_emulator, start_agent, tmp_path):
    """A runnable with ignoreExitStatus may fail without failing the task."""
    marker = tmp_path / "marker"
    emu, _, status = run_once(
        make_emulator,
        start_agent,
        job(script("exit 4", ignoreExitStatus=True), script(f"touch {marker}")),
    )
    assert status == 0
    assert emu.task_state(TASK0) == "SUCCEEDED"
    assert marker.exists()


def test_always_run_after_failure(make_emulator, start_agent, tmp_path):
    """After a failure only alwaysRun runnables start; the task keeps the first exit code."""
    skipped, cleanup = tmp_path / "skipped", tmp_path / "cleanup"
    emu, _, status = run_once(
        make_emulator,
        start_agent,
        job(
            script("exit 7"),
            script(f"touch {skipped}"),
            script(f"touch {cleanup}; exit 9", alwaysRun=True),
        ),
    )
    assert status == 1
    assert exit_code(emu, TASK0) == 7
    assert cleanup.exists() and not skipped.exists()


def test_environment_precedence_and_task_index(make_emulator, start_agent, tmp_path):
    """Runnable variables beat task variables; BATCH_TASK_INDEX is set; agent env does not leak."""
    out = tmp_path / "env"
    config = job(
        script(
            f'echo "$WHO $TASK_ONLY $BATCH_TASK_INDEX ${{AGENT_SECRET:-unset}}" > {out}',
            environment={"variables": {"WHO": "runnable"}},
        ),
        environment={"variables": {"WHO": "task", "TASK_ONLY": "t"}},
    )
    emu = make_emulator(config)
    agent = start_agent(emu, "--once", AGENT_SECRET="leaked")
    assert agent.wait(60) == 0, agent.log()
    assert out.read_text() == "runnable t 0 unset\n"


def test_shebang_picks_interpreter(make_emulator, start_agent, tmp_path):
    """A script's shebang chooses its interpreter; without one /bin/sh runs it."""
    out = tmp_path / "py"
    code = f"#!{sys.executable}\nimport sys\nopen({str(out)!r}, 'w').write(sys.version[:2])\n"
    _emu, _, status = run_once(make_emulator, start_agent, job(script(code)))
    assert status == 0
    assert out.read_text() == "3."


def test_large_output_does_not_block(make_emulator, start_agent):
    """600k lines of output neither block the runnable nor get lost on the way to the log."""
    _emu, agent, status = run_once(
        make_emulator,
        start_agent,
        job(script("seq 1 600000; echo done >&2")),
        timeout=120,
    )
    assert status == 0
    log = agent.log()
    assert "[task 0 r1 stdout] 600000" in log
    assert "[task 0 r1 stderr] done" in log


def test_cancel_kills_the_process_group(make_emulator, start_agent, tmp_path):
    """CANCELLED stops the runnable and its children and reports FAILED saying so."""
    pids = tmp_path / "pids"
    emu = make_emulator(job(script(f"sleep 300 & echo $! > {pids}; echo $$ >> {pids}; wait")))
    agent = start_agent(emu)
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="pids")
    emu.cancel_task(TASK0)
    wait_until(lambda: emu.task_state(TASK0) == "FAILED", what="FAILED")
    assert "cancelled" in final_event(emu, TASK0)["description"]
    for pid in map(int, pids.read_text().split()):
        wait_until(lambda pid=pid: not alive(pid), what=f"pid {pid} gone")
    assert agent.terminate() == 0


def test_deleted_task_is_no_longer_reported(make_emulator, start_agent, tmp_path):
    """After DELETED the task leaves reports and the state dir."""
    emu = make_emulator(job(script("true")))
    agent = start_agent(emu)
    wait_until(lambda: emu.is_deleted(TASK0), what="DELETED sent")
    count = len(emu.reports)
    wait_until(lambda: len(emu.reports) >= count + 2, what="two more reports")
    last = emu.reports[-1].body["agentInfo"]
    assert last.get("tasks", []) == []
    assert agent.terminate() == 0
    db = tmp_path / "state" / "state.db"
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
    conn.close()
    assert list((tmp_path / "state" / "tasks").iterdir()) == []


# An asyncio timer may fire up to the clock's resolution early: allow that much, no more.
EARLY = 0.01


def test_report_cadence_honours_both_intervals(make_emulator, start_agent, tmp_path):
    """Idle reports come every defaultReportInterval; a state change reports early but never
    sooner than minReportInterval after the previous report."""
    go = tmp_path / "go"
    emu = make_emulator(
        job(script(f"while [ ! -e {go} ]; do sleep 0.05; done")),
        default_report_interval="2s",
        min_report_interval="0.5s",
    )
    # The agent's own default, were it to ignore the server's, would show as 60 s gaps.
    agent = start_agent(emu, BATCH_AGENT_DEFAULT_REPORT_INTERVAL="60")
    wait_until(lambda: emu.task_state(TASK0) == "RUNNING", what="RUNNING")
    running = len(emu.reports)
    wait_until(lambda: len(emu.reports) >= running + 3, timeout=30, what="idle reports")
    idle = [b.time - a.time for a, b in itertools.pairwise(emu.reports[running - 1 :])]
    # Lower bound: the agent's promise. Upper bound: generous, the machine may be loaded.
    assert all(2.0 - EARLY <= gap < 2.0 + 10 for gap in idle), idle

    # An early report: the server asks for rare idle reports, then the task ends.
    emu.set_intervals(default="30s", minimum="0.5s")
    seen = len(emu.reports)
    wait_until(lambda: len(emu.reports) > seen, what="the new intervals sent")
    go.touch()
    wait_until(lambda: emu.task_state(TASK0) == "SUCCEEDED", timeout=20, what="SUCCEEDED")
    wait_until(lambda: emu.is_deleted(TASK0), what="DELETED sent")
    assert agent.terminate() == 0
    reports = list(emu.reports)
    done = next(
        i
        for i, r in enumerate(reports)
        if any(
            t["taskStatus"]["state"] == "SUCCEEDED" for t in r.body["agentInfo"].get("tasks", [])
        )
    )
    assert reports[done].time - reports[done - 1].time < 30 - EARLY, "not reported early"
    # Never closer than minReportInterval, even when changes came faster (the start: assigned
    # then RUNNING at once; the end: SUCCEEDED, then DELETED and forgotten; AGENT_STOPPED).
    gaps = [b.time - a.time for a, b in itertools.pairwise(reports)]
    assert min(gaps) >= 0.5 - EARLY, gaps


def test_recovers_after_503s(make_emulator, start_agent, tmp_path):
    """Failed reports are retried with backoff and the task's status still arrives in full."""
    emu = make_emulator(job(script("true")))
    emu.fail_next(3, status=503)
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 0, agent.log()
    assert emu.task_state(TASK0) == "SUCCEEDED"
    assert "503" in agent.log()


def test_malformed_response_is_retried(make_emulator, start_agent):
    """A non-JSON answer is logged and retried, never a crash."""
    emu = make_emulator(job(script("true")))
    emu.respond_raw_next(b"<html>oops</html>")
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 0, agent.log()
    assert emu.task_state(TASK0) == "SUCCEEDED"


BAD_SPECS = [
    ({"runnables": []}, "runnables: a task needs at least one runnable"),
    ({"runnables": [{"ignoreExitStatus": True}]}, "runnables[0]: needs one of script"),
    ({"runnables": [{"script": {}}]}, 'runnables[0].script: needs "text" or "path"'),
    (
        {
            "runnables": [
                {"script": {"text": "true"}},
                {"script": {"text": "true"}, "timeout": "soon"},
            ]
        },
        'runnables[1].timeout: "soon" is not a duration',
    ),
    (
        {"runnables": [{"script": {"path": "/no/such/script.sh"}}]},
        'runnables[0].script.path: "/no/such/script.sh" does not exist',
    ),
    (
        {"runnables": [{"script": {"text": "true"}}], "maxRunDuration": 12},
        "maxRunDuration: 12 is not a duration",
    ),
]


def test_bad_specs_fail_alone(make_emulator, start_agent, tmp_path):
    """Each malformed task fails with 50000 and an event naming the field; a good one succeeds."""
    emu = make_emulator(job(script(f"touch {tmp_path / 'good'}")))
    names = [emu.add_task({"intendedState": "ASSIGNED", "spec": spec}) for spec, _ in BAD_SPECS]
    agent = start_agent(emu, "--once")
    assert agent.wait(60) == 1, agent.log()
    assert (tmp_path / "good").exists()
    assert emu.task_state(TASK0) == "SUCCEEDED"
    for name, (_, problem) in zip(names, BAD_SPECS, strict=True):
        assert emu.task_state(name) == "FAILED", name
        event = final_event(emu, name)
        assert problem in event["description"], event
        assert event["taskExecution"]["exitCode"] == 50000


def test_sigterm_sends_agent_stopped(make_emulator, start_agent):
    """SIGTERM: a last report with AGENT_STOPPED, exit 0, and the running task is left alone."""
    emu = make_emulator(job(script("sleep 5")))
    agent = start_agent(emu)
    wait_until(lambda: emu.task_state(TASK0) == "RUNNING", what="RUNNING")
    assert agent.terminate() == 0
    states = [r.body["agentInfo"]["state"] for r in emu.reports]
    assert states[0] == "AGENT_STARTING"
    assert states[-1] == "AGENT_STOPPED"
    assert "AGENT_STARTING" not in states[1:]


def test_kill_9_then_restart_never_runs_a_task_twice(make_emulator, start_agent, tmp_path):
    """After kill -9 mid-task, the restarted agent finds the running script, does not start it
    again, and reports its real exit code. The script prints nothing, so its pid was never
    saved: the waiter is found by its command line."""
    counter, go = tmp_path / "runs", tmp_path / "go"
    text = f"echo run >> {counter}; while [ ! -e {go} ]; do sleep 0.05; done; exit 5"
    emu = make_emulator(job(script(text)))
    first = start_agent(emu)
    wait_until(lambda: counter.exists(), what="task started")
    first.kill()
    second = start_agent(emu)
    wait_until(lambda: len(emu.reports) >= 3 and "reattach" in second.log(), what="reattach")
    go.touch()
    wait_until(lambda: emu.task_state(TASK0) == "FAILED", what="FAILED")
    assert exit_code(emu, TASK0) == 5
    assert counter.read_text() == "run\n"
    assert second.terminate() == 0


def test_once_exit_status_when_unreachable(start_agent, make_emulator, tmp_path):
    """--once exits 3 when the control plane cannot be reached within the budget."""
    emu = make_emulator(None)
    agent = start_agent(emu, "--once", "--endpoint", "http://127.0.0.1:9/")
    assert agent.wait(60) == 3


def test_once_exit_status_on_bad_config(start_agent, make_emulator, tmp_path):
    """--once exits 2 for an unusable configuration."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    emu = make_emulator(None)
    agent = start_agent(emu, "--once", "--config", str(bad))
    assert agent.wait(30) == 2


def test_once_with_no_tasks_exits_zero(make_emulator, start_agent):
    """With nothing to do, --once reports, sees no task, and exits 0 with AGENT_STOPPED last."""
    emu = make_emulator(None)
    agent = start_agent(emu, "--once")
    assert agent.wait(30) == 0, agent.log()
    assert emu.reports[-1].body["agentInfo"]["state"] == "AGENT_STOPPED"


pytestmark = pytest.mark.timeout(180)


def test_json_log_format_carries_runnable_output(make_emulator, start_agent):
    """--log-format json: every line of the agent's log is a JSON object, output lines tagged."""
    emu = make_emulator(job(script("echo hello; echo oops >&2")))
    agent = start_agent(emu, "--once", "--log-format", "json")
    assert agent.wait(60) == 0, agent.log()
    entries = [json.loads(line) for line in agent.log().splitlines()]
    output = [e for e in entries if e.get("task") == "task 0 r1"]
    assert {(e["stream"], e["message"], e["severity"]) for e in output} == {
        ("stdout", "hello", "INFO"),
        ("stderr", "oops", "ERROR"),
    }


def test_sigterm_while_the_metadata_server_is_unreachable(make_emulator, start_agent):
    """An agent still waiting for the metadata server stops at once on SIGTERM, exit 0."""
    emu = make_emulator(None)
    agent = start_agent(emu, GCE_METADATA_HOST="127.0.0.1:9")
    wait_until(lambda: "metadata server" in agent.log(), what="retrying the metadata server")
    assert agent.terminate(timeout=10) == 0


def reported_task_ids(emu) -> list[str]:
    """Every taskId the agent reported, in the order first seen."""
    seen: dict[str, None] = {}
    for report in emu.reports:
        for task in report.body["agentInfo"].get("tasks", []):
            seen.setdefault(task["taskId"], None)
    return list(seen)


def test_documented_task_names_job_uid_and_version_are_reported(make_emulator, start_agent):
    """The agent echoes `task/JOB_UID-group0-0/0/0`, reports the job uid and group it names,
    and the default version in Google's shape."""
    emu, agent, status = run_once(make_emulator, start_agent, job(script("true")))
    assert status == 0, agent.log()
    assert reported_task_ids(emu) == [f"task/{emu.job_uid}-group0-0/0/0"]
    info = next(r.body for r in emu.reports if r.body["agentInfo"].get("tasks"))
    assert (info["agentInfo"]["jobId"], info["agentInfo"]["taskGroupId"]) == (
        emu.job_uid,
        "group0",
    )
    assert {r.body["metadata"]["version"] for r in emu.reports} == {REPORTED_VERSION}
    assert emu.invalid_reports == []


def test_a_retry_comes_under_the_next_attempts_name(make_emulator, start_agent, tmp_path):
    """A failed attempt is retried as `.../1/0`: same index, BATCH_TASK_RETRY_ATTEMPT=1."""
    out = tmp_path / "attempts"
    text = f'echo "$BATCH_TASK_INDEX $BATCH_TASK_RETRY_ATTEMPT" >> {out}; '
    text += '[ "$BATCH_TASK_RETRY_ATTEMPT" = 1 ]'
    emu = make_emulator(job(script(text), maxRetryCount=1))
    agent = start_agent(emu)  # not --once: that would end with the first attempt's failure
    wait_until(lambda: emu.task_state(TASK0) == "SUCCEEDED", what="the retry SUCCEEDED")
    assert agent.terminate() == 0
    assert out.read_text() == "0 0\n0 1\n"
    first, retry = (tasknames.agent_name(emu.job_uid, 0, attempt) for attempt in (0, 1))
    assert reported_task_ids(emu) == [first, retry]
    assert emu.task_state(retry) == "SUCCEEDED"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_reported_version_is_configurable(make_emulator, start_agent, how):
    """--reported-version (or BATCH_AGENT_REPORTED_VERSION) is what metadata.version says."""
    wanted = "cloud-batch-agent_20991231.00_p00"
    emu = make_emulator(job(script("true")))
    if how == "flag":
        agent = start_agent(emu, "--once", "--reported-version", wanted)
    else:
        agent = start_agent(emu, "--once", BATCH_AGENT_REPORTED_VERSION=wanted)
    assert agent.wait(60) == 0, agent.log()
    assert {r.body["metadata"]["version"] for r in emu.reports} == {wanted}


def test_version_prints_ours_and_the_reported_one():
    """`batch-agent version`: our version, then the one `run` would report here."""
    done = subprocess.run(
        [*AGENT, "version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "BATCH_AGENT_REPORTED_VERSION": "v-test"},
    )
    assert done.stdout == f"batch-agent {__version__}\nreported as v-test\n"
    clean = {k: v for k, v in os.environ.items() if k != "BATCH_AGENT_REPORTED_VERSION"}
    done = subprocess.run(
        [*AGENT, "version"], capture_output=True, text=True, timeout=60, env=clean
    )
    assert done.stdout.splitlines()[1] == f"reported as {REPORTED_VERSION}"
