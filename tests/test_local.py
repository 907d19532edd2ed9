"""`batch-agent local`: real job configs run by the real agent subprocesses against the emulator."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from batch_agent.emulator import load_job
from batch_agent.local.agents import is_chatter, parse_line
from batch_agent.local.cli import job_id
from batch_agent.local.session import default_vms, runnable_labels
from batch_agent.local.view import RunInfo, prefix
from tests import docker_support
from tests.helpers import alive, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOCAL = [sys.executable, "-m", "batch_agent.cli", "local"]


def local(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOCAL, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def write(tmp_path: Path, config: object, name: str = "job.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return str(path)


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def summary(stdout: str) -> dict[str, Any]:
    last = events(stdout)[-1]
    assert last["event"] == "summary"
    return last


def outputs(stdout: str) -> list[str]:
    return [e["message"] for e in events(stdout) if e["event"] == "output"]


def job(
    *runnables: dict[str, Any], count: int = 1, parallelism: int | None = None, **spec: Any
) -> dict[str, Any]:
    """A job config with one task group; `spec` fields go to its taskSpec."""
    group: dict[str, Any] = {"taskCount": count, "taskSpec": {"runnables": list(runnables), **spec}}
    if parallelism is not None:
        group["parallelism"] = parallelism
    return {"taskGroups": [group]}


def script(text: str, **fields: Any) -> dict[str, Any]:
    return {"script": {"text": text}, **fields}


# -- the examples -----------------------------------------------------------------------------

EXPECTED_OUTPUT = {
    "hello-world": ["Hello world! This is task 2.", "task 0 ran on"],
    "barrier": ["rank 0 of 2 sets up; hosts: 127.0.0.1 127.0.0.1", "rank 1 passed both barriers"],
    "background-service": ["client got: hello from the service, you asked for /c"],
    "retry": ["task 1, attempt 2", "third time lucky"],
    "task-environments": ["Hello, Venus! (task 1 of 3)", "Ahoy, Mars! (task 2 of 3)"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_example_succeeds(name: str) -> None:
    """Each script example runs to SUCCEEDED, every task too, printing what it promises."""
    result = local(f"{EXAMPLES}/{name}.json", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    end = summary(result.stdout)
    assert end["state"] == "SUCCEEDED"
    assert {t["state"] for t in end["tasks"]} == {"SUCCEEDED"}
    seen = outputs(result.stdout)
    for text in EXPECTED_OUTPUT[name]:
        assert any(text in line for line in seen), (text, seen)
    if name == "retry":
        assert [t["attempts"] for t in end["tasks"]] == [3, 3]


def test_container_example_succeeds(docker_engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The container example prints each task's index and the task count from its container."""
    # Google's sample image, made here from busybox: nothing can be pulled from outside.
    docker_support.import_busybox(docker_engine, "gcr.io/google-containers/busybox:latest")
    monkeypatch.setenv("DOCKER_HOST", docker_engine)
    result = local(f"{EXAMPLES}/container.json", "--json", timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    seen = outputs(result.stdout)
    assert "Hello world! This is task 1. This job has a total of 2 tasks." in seen


def test_every_example_is_a_valid_job_config() -> None:
    """All examples (the container one too) pass the strict check, and each is tested above."""
    names = {p.stem for p in EXAMPLES.glob("*.json")}
    assert names == {*EXPECTED_OUTPUT, "container"}
    for name in names:
        load_job(json.loads((EXAMPLES / f"{name}.json").read_text()), strict=True)


def test_fields_that_cannot_apply_are_named_once(tmp_path: Path) -> None:
    """allocationPolicy and friends are accepted and named in one warning on stderr."""
    config = job(script("true"))
    config |= {"allocationPolicy": {"instances": [{"policy": {"machineType": "e2-micro"}}]}}
    config["notifications"] = [{"pubsubTopic": "projects/p/topics/t"}]
    result = local(write(tmp_path, config))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "batch-agent local: warning: not applied locally: allocationPolicy, notifications"
    ]


# -- invalid configs --------------------------------------------------------------------------

SPEC = {"runnables": [{"script": {"text": "true"}}]}


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            job(script("true"), script("true"), {"script": {}}),
            'taskGroups[0].taskSpec.runnables[2].script: needs "text" or "path"',
        ),
        ({"taskGroups": [{"taskSpec": SPEC, "bogus": 1}]}, "taskGroups[0].bogus: unknown field"),
        (
            {"taskGroups": [{"taskCount": "three", "taskSpec": SPEC}]},
            'taskGroups[0].taskCount: "three" is not an int64 string',
        ),
        ({"taskGroups": []}, "taskGroups: needs exactly one task group, got 0"),
        (
            {
                "task_groups": [
                    {"task_spec": SPEC, "scheduling_policy": "IN_ORDER", "parallelism": 2}
                ]
            },
            "taskGroups[0].parallelism: must be 1 when schedulingPolicy is IN_ORDER",
        ),
        (
            job(script("true"), lifecyclePolicies=[{"actionCondition": {"exitCodes": [1]}}]),
            'taskGroups[0].taskSpec.lifecyclePolicies[0].action: needs "RETRY_TASK" or "FAIL_TASK"',
        ),
        (
            job(script("true"), maxRetryCount=11),
            "taskGroups[0].taskSpec.maxRetryCount: 11 is not between 0 and 10",
        ),
        (
            job({"script": {"text": "true"}, "container": {"imageUri": "busybox"}}),
            "taskGroups[0].taskSpec.runnables[0]: has both script and container; give only one",
        ),
        (
            {**job(script("true")), "logsPolicy": {"destination": "PATH"}},
            'logsPolicy.logsPath: needs a path when destination is "PATH"',
        ),
        ([1, 2], "<root>: list is not a JSON object"),
    ],
)
def test_invalid_config_exits_2_naming_the_path(tmp_path: Path, config: Any, error: str) -> None:
    """A config Batch would refuse exits 2 before anything runs, naming path and reason."""
    result = local(write(tmp_path, config), timeout=30)
    assert result.returncode == 2
    assert f"\n  {error}\n" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("content", "error"), [("{", "is not JSON"), (None, "cannot read"), ("{}", "needs exactly")]
)
def test_unreadable_config_exits_2(tmp_path: Path, content: str | None, error: str) -> None:
    """A missing file, broken JSON or an empty job is a usage error (2)."""
    path = tmp_path / "job.json"
    if content is not None:
        path.write_text(content)
    result = local(str(path), timeout=30)
    assert result.returncode == 2 and error in result.stderr


# -- outcomes ---------------------------------------------------------------------------------


def test_failing_task_fails_the_job_and_the_summary_shows_its_exit_code(tmp_path: Path) -> None:
    """One task exiting 3 fails the job (exit 1); the plain summary lists its exit code."""
    config = job(
        script('echo "task $BATCH_TASK_INDEX"; [ "$BATCH_TASK_INDEX" != 1 ] || exit 3'), count=2
    )
    result = local(write(tmp_path, config))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "[task 1 · r1] task 1" in lines
    assert any(
        line.startswith("[task 1] FAILED with exit code 3: Task state is updated") for line in lines
    )
    table = lines[lines.index(next(x for x in lines if x.startswith("TASK  STATE"))) :]
    assert table[1].split()[:3] == ["0", "SUCCEEDED", "0"]
    assert table[2].split()[:3] == ["1", "FAILED", "3"]
    assert lines[-4].startswith("job job-") and ": FAILED in " in lines[-4]


@pytest.mark.parametrize(
    ("exit_code", "policies", "attempts"),
    [
        (1, [], 3),  # maxRetryCount 2: three attempts in all
        (2, [{"action": "FAIL_TASK", "actionCondition": {"exitCodes": [2]}}], 1),
        (1, [{"action": "FAIL_TASK", "actionCondition": {"exitCodes": [2]}}], 3),
        (1, [{"action": "RETRY_TASK", "actionCondition": {"exitCodes": [5]}}], 1),
        (5, [{"action": "RETRY_TASK", "actionCondition": {"exitCodes": [5]}}], 3),
    ],
)
def test_retries_follow_max_retry_count_and_lifecycle_policies(
    tmp_path: Path, exit_code: int, policies: list[dict[str, Any]], attempts: int
) -> None:
    """A failing task runs 1 + maxRetryCount times unless a lifecycle policy stops it."""
    text = f'echo "attempt $BATCH_TASK_RETRY_ATTEMPT"; exit {exit_code}'
    config = job(script(text), maxRetryCount=2, lifecyclePolicies=policies)
    if not policies:
        del config["taskGroups"][0]["taskSpec"]["lifecyclePolicies"]
    result = local(write(tmp_path, config), "--json")
    assert result.returncode == 1
    # Each attempt's line once; attempts may be shipped in one round, in either order.
    assert sorted(outputs(result.stdout)) == [f"attempt {i}" for i in range(attempts)]
    assert summary(result.stdout)["tasks"] == [
        {
            "task": 0,
            "state": "FAILED",
            "exitCode": exit_code,
            "duration": pytest.approx(0, abs=5),
            "attempts": attempts,
        }
    ]


def test_json_carries_every_state_change(tmp_path: Path) -> None:
    """--json is one object per line; each task's and the job's changes chain without gaps."""
    config = job(script("echo hi"), count=3, parallelism=2)
    result = local(write(tmp_path, config), "--json")
    assert result.returncode == 0
    stream = events(result.stdout)
    assert stream[0]["event"] == "start" and stream[-1]["event"] == "summary"
    assert stream[-1]["reports"] >= 2  # state:report calls answered: one per change at least
    jobs = [(e["from"], e["state"]) for e in stream if e["event"] == "job"]
    assert jobs == [
        (None, "QUEUED"),
        ("QUEUED", "SCHEDULED"),
        ("SCHEDULED", "RUNNING"),
        ("RUNNING", "SUCCEEDED"),
    ]
    for index in range(3):
        changes = [e for e in stream if e["event"] == "task" and e["task"] == index]
        states = [c["state"] for c in changes]
        assert [c["from"] for c in changes] == [None, *states[:-1]]
        assert states[:2] == ["PENDING", "ASSIGNED"] and states[-1] == "SUCCEEDED"
        assert changes[-1]["exitCode"] == 0
    agents = [e for e in stream if e["event"] == "agent"]
    assert [a["state"] for a in agents] == ["started", "started", "stopped", "stopped"]
    assert all(a.get("exitStatus", 0) == 0 for a in agents)


def test_in_order_runs_tasks_one_after_another(tmp_path: Path) -> None:
    """schedulingPolicy IN_ORDER starts task i only after task i-1 finished."""
    config = job(script("echo $BATCH_TASK_INDEX"), count=3)
    config["taskGroups"][0]["schedulingPolicy"] = "IN_ORDER"
    result = local(write(tmp_path, config), "--json")
    assert result.returncode == 0
    order = [
        (e["task"], e["state"])
        for e in events(result.stdout)
        if e["event"] == "task" and e["state"] in ("ASSIGNED", "SUCCEEDED")
    ]
    assert order == [(i, s) for i in range(3) for s in ("ASSIGNED", "SUCCEEDED")]
    # Output is shown as it was shipped: one agent round may carry the end of task i and the
    # start of task i+1 in either order (their timestamps are when the agent read them).
    assert sorted(outputs(result.stdout)) == ["0", "1", "2"]
    assert summary(result.stdout)["tasks"][0]["attempts"] == 1


def test_min_report_interval_spaces_the_reports(tmp_path: Path) -> None:
    """--min-report-interval 0.5s: one after another, each task's end reaches the server at
    least 0.5 s after the previous one's, since each needs a report of its own."""
    config = job(script("true"), count=3, parallelism=1)
    result = local(write(tmp_path, config), "--json", "--min-report-interval", "0.5s")
    assert result.returncode == 0, result.stderr
    ends = [
        e["time"]
        for e in events(result.stdout)
        if e["event"] == "task" and e["state"] == "SUCCEEDED"
    ]
    assert len(ends) == 3
    # change times are rounded to the millisecond
    assert all(later - earlier >= 0.499 for earlier, later in pairwise(ends))


@pytest.mark.parametrize("value", ["soon", "-1", "1m"])
def test_min_report_interval_must_be_seconds(tmp_path: Path, value: str) -> None:
    """A --min-report-interval that is not a non-negative number of seconds exits 2."""
    result = local(write(tmp_path, job(script("true"))), "--min-report-interval", value)
    assert result.returncode == 2
    assert "--min-report-interval" in result.stderr and "not a number of seconds" in result.stderr


def test_logs_policy_path_and_keep(tmp_path: Path) -> None:
    """logsPolicy PATH writes Google's three files in logsPath, built from the Cloud Logging
    entries: output- (every line), stdout- and stderr-JOB_UID.log, each line
    `[batch_task_logs]DATETIME SEVERITY: [task_id:TASK,runnable_index:N] MESSAGE`; --keep keeps
    the work dir with the agents' logs and the same files."""
    config = job(script("echo out-$BATCH_TASK_INDEX; echo err >&2"), count=2)
    config["logsPolicy"] = {"destination": "PATH", "logsPath": str(tmp_path / "logs")}
    result = local(write(tmp_path, config), "--json", "--keep")
    assert result.returncode == 0, result.stderr
    start, end = events(result.stdout)[0], summary(result.stdout)
    uid = start["jobUid"]
    logs = tmp_path / "logs"
    assert sorted(p.name for p in logs.iterdir()) == [
        f"output-{uid}.log",
        f"stderr-{uid}.log",
        f"stdout-{uid}.log",
    ]
    line = r"\[batch_task_logs\]\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (INFO|ERROR): "
    line += rf"\[task_id:task/{uid}-group0-(\d)/0/0,runnable_index:0\] (.*)"
    parsed = {
        kind: sorted(
            re.fullmatch(line, text).groups()  # type: ignore[union-attr]
            for text in (logs / f"{kind}-{uid}.log").read_text().splitlines()
        )
        for kind in ("output", "stdout", "stderr")
    }
    assert parsed["stdout"] == [("INFO", "0", "out-0"), ("INFO", "1", "out-1")]
    assert parsed["stderr"] == [("ERROR", "0", "err"), ("ERROR", "1", "err")]
    assert parsed["output"] == sorted(parsed["stdout"] + parsed["stderr"])
    kept = Path(end["workDir"])
    try:
        copy = (kept / "logs" / f"output-{uid}.log").read_text()
        assert copy == (logs / f"output-{uid}.log").read_text()
        assert (kept / "vm-0" / "agent.log").stat().st_size > 0
    finally:
        shutil.rmtree(kept)


def test_a_logs_path_that_cannot_be_written_is_a_warning(tmp_path: Path) -> None:
    """A logsPath this machine cannot write is named once in a warning; the job still runs
    and its output is still shown."""
    (tmp_path / "file").write_text("")
    config = job(script("echo hi"))
    config["logsPolicy"] = {"destination": "PATH", "logsPath": str(tmp_path / "file" / "logs")}
    result = local(write(tmp_path, config), "--json")
    assert result.returncode == 0, result.stderr
    warnings = [e["message"] for e in events(result.stdout) if e["event"] == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith("cannot write the log files in ")
    assert outputs(result.stdout) == ["hi"]


def test_output_is_read_from_cloud_logging_after_the_task_runs(tmp_path: Path) -> None:
    """Output comes from the entries the agents wrote to the emulator's Cloud Logging: a JSON
    line is a structured entry (its message shown, its severity kept), and no line of an attempt
    is shown before a change showing that attempt RUNNING (or ended); none lost or doubled."""
    text = (
        'echo "attempt $BATCH_TASK_RETRY_ATTEMPT"; '
        'echo \'{"severity": "WARNING", "message": "careful", "step": 1}\'; '
        '[ "$BATCH_TASK_RETRY_ATTEMPT" = 1 ] || exit 1'
    )
    config = job(script(text), count=3, parallelism=2, maxRetryCount=1)
    config["logsPolicy"] = {"destination": "PATH", "logsPath": str(tmp_path / "logs")}
    result = local(write(tmp_path, config), "--json")
    assert result.returncode == 0, result.stderr
    stream = events(result.stdout)
    shown: set[tuple[int, int]] = set()
    seen: list[tuple[int, str]] = []
    for event in stream:
        if event["event"] == "task" and event["state"] in ("RUNNING", "SUCCEEDED", "FAILED"):
            shown.add((event["task"], event["attempt"]))
        if event["event"] == "output":
            task, message = event["task"], event["message"]
            seen.append((task, message))
            if message.startswith("attempt "):
                assert (task, int(message.split()[1])) in shown, (event, shown)
            assert any(t == task for t, _ in shown), event
    expected = [(t, m) for t in range(3) for m in ("attempt 0", "attempt 1", "careful", "careful")]
    assert sorted(seen) == sorted(expected)
    uid = stream[0]["jobUid"]
    warnings = [
        line
        for line in (tmp_path / "logs" / f"stdout-{uid}.log").read_text().splitlines()
        if line.endswith("] careful")
    ]
    assert len(warnings) == 6 and all(" WARNING: [task_id:task/" in w for w in warnings)


def sleeping_job(tmp_path: Path, count: int, *, stderr: int) -> subprocess.Popen[str]:
    """`local --json` running `count` tasks (2 at a time) that each write their shell's and a
    `sleep 300`'s pids to `tmp_path/pids`, print "started" and wait."""
    pids = tmp_path / "pids"
    text = f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; echo started; wait"
    config = job(script(text), count=count, parallelism=2)
    return subprocess.Popen(
        [*LOCAL, write(tmp_path, config), "--json"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def test_sigint_cancels_the_job_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Ctrl-C cancels every task (their processes die), stops every agent and exits 130."""
    pids = tmp_path / "pids"
    with sleeping_job(tmp_path, 3, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        seen: list[dict[str, Any]] = []
        while sum(e["event"] == "output" for e in seen) < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            seen.append(json.loads(line))
        wait_until(lambda: len(pids.read_text().split()) == 4, what="both tasks' pids")
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
    stream = seen + events(rest)
    agents = {e["pid"] for e in stream if e["event"] == "agent"}
    assert len(agents) == 2
    for pid in [*agents, *map(int, pids.read_text().split())]:
        wait_until(lambda pid=pid: not alive(pid), timeout=10, what=f"pid {pid} gone")
    jobs = [e["state"] for e in stream if e["event"] == "job"]
    assert jobs[-2:] == ["CANCELLATION_IN_PROGRESS", "CANCELLED"]
    end = summary(rest)
    assert end["state"] == "CANCELLED" and end["exitStatus"] == 130
    assert sorted(t["state"] for t in end["tasks"]) == ["FAILED", "FAILED", "UNEXECUTED"]


def test_agents_cancel_their_tasks_and_exit_when_local_is_killed(tmp_path: Path) -> None:
    """`local` killed with SIGKILL cannot stop its agents: each sees it gone (by a pidfd on
    its parent), cancels its tasks and exits instead of retrying a control plane that is
    gone."""
    pids = tmp_path / "pids"
    with sleeping_job(tmp_path, 2, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        agents: set[int] = set()
        while len(agents) < 2:
            line = proc.stdout.readline()
            assert line, "local ended early"
            event = json.loads(line)
            if event["event"] == "agent":
                agents.add(event["pid"])
        wait_until(
            lambda: pids.exists() and len(pids.read_text().split()) == 4, what="both tasks' pids"
        )
        proc.kill()
    for pid in [*agents, *map(int, pids.read_text().split())]:
        wait_until(lambda pid=pid: not alive(pid), timeout=30, what=f"pid {pid} gone")


# -- pure parts -------------------------------------------------------------------------------


def group(**fields: Any) -> dict[str, Any]:
    return {"taskGroups": [{"taskSpec": SPEC, **fields}]}


BARRIER_SPEC = {"runnables": [{"barrier": {}}]}


@pytest.mark.parametrize(
    ("config", "vms"),
    [
        (group(), 1),
        (group(taskCount=3), 3),
        (group(taskCount=3, parallelism=2), 2),
        (group(taskCount=10, taskCountPerNode=4), 3),
        (group(taskCount=40), 8),
        (group(taskCount=5, schedulingPolicy="IN_ORDER"), 1),
        ({"taskGroups": [{"taskCount": 12, "taskCountPerNode": 1, "taskSpec": BARRIER_SPEC}]}, 12),
    ],
)
def test_default_vms(config: dict[str, Any], vms: int) -> None:
    """As many VMs as the job runs tasks at once, capped at 8 unless barriers need them all."""
    assert default_vms(load_job(config)) == vms


def test_runnable_labels_and_prefix(tmp_path: Path) -> None:
    """Prefixes name task and runnable, with its displayName, image or barrier name."""
    runnables = [
        {"script": {"text": "true"}, "displayName": "compile"},
        {"container": {"imageUri": "gcr.io/google-containers/busybox:1.36"}},
        {"barrier": {"name": "sync"}},
        {"script": {"text": "true"}},
    ]
    labels = runnable_labels(load_job(job(*runnables)))
    assert labels == ("compile", "busybox", "sync", "")
    info = RunInfo("j", 4, 1, labels, tmp_path)
    assert prefix(info, 3, 1) == "task 3 · r1 compile"
    assert prefix(info, 3, 4) == "task 3 · r4"


def test_job_id_is_batch_shaped() -> None:
    """Job ids come from the file name: lowercase, hyphens, a letter first, <= 63 chars."""
    assert job_id("x/Hello_World.json", 0).startswith("hello-world-19700101-")
    assert job_id("7.json", 0).startswith("job-7-")
    assert len(job_id("a" * 100 + ".json", 0)) <= 63


def test_parse_agent_lines() -> None:
    """JSON output lines carry task and runnable; anything else is the agent's own line."""
    out = parse_line(
        1,
        '{"severity": "ERROR", "logger": "batch_agent.output", "task": "task 3 r2",'
        ' "stream": "stderr", "message": "boom"}',
    )
    assert (out.vm, out.task, out.runnable, out.stream, out.message) == (1, 3, 2, "stderr", "boom")
    own = parse_line(0, '{"severity": "WARNING", "logger": "batch_agent", "message": "slow"}')
    assert (own.task, own.severity, own.message) == (None, "WARNING", "slow")
    assert parse_line(0, "Traceback (most recent call last):").severity == "ERROR"


def test_only_warnings_and_errors_of_an_agent_are_parsed() -> None:
    """INFO and DEBUG lines (chatter, output copies) are never shown, so they are not parsed;
    a severity quoted inside a message does not count."""
    assert is_chatter(b'{"time": "T", "severity": "INFO", "logger": "batch_agent", "message": "x"}')
    assert is_chatter(b'{"time": "T", "severity": "DEBUG", "message": "x"}')
    assert not is_chatter(b'{"time": "T", "severity": "WARNING", "message": "x"}')
    quoted = json.dumps({"severity": "ERROR", "message": '"severity": "INFO"'})
    assert not is_chatter(quoted.encode()) and parse_line(0, quoted).severity == "ERROR"
    assert not is_chatter(b'Traceback (most recent call last): "severity": "INFO"')


def test_sigint_leaves_no_container_behind(
    tmp_path: Path, docker_engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during a container job: every container of the job is stopped and removed."""
    monkeypatch.setenv("DOCKER_HOST", docker_engine)
    runnable = {
        "container": {
            "imageUri": docker_support.BUSYBOX_IMAGE,
            "entrypoint": "/bin/sh",
            "commands": ["-c", "echo started; trap '' TERM; while :; do sleep 1; done"],
        }
    }
    with subprocess.Popen(
        [*LOCAL, write(tmp_path, job(runnable, count=2)), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        started = 0
        while started < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            event = json.loads(line)
            started += event["event"] == "output" and event.get("message") == "started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 130, err
    client = docker_support.client(docker_engine)
    try:
        left = client.containers.list(all=True, filters={"label": "batch-agent.task"})
    finally:
        client.close()
    assert left == []
