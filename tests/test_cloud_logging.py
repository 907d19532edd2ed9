"""Cloud Logging end to end: the real agent ships its tasks' output and its own log to the
emulator's entries:write, each line once (after Cloud Logging's dedup rule) through failures,
denials and a kill -9, with the documented severities, labels, resources and log names."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from batch_agent.emulator import Emulator
from batch_agent.names import parse_task_name
from tests.helpers import final_event, script, wait_until

LABELS = {"team": "genomics"}


def logged_task(
    text: str, *, labels: dict[str, str] | None = None, **fields: Any
) -> dict[str, Any]:
    """An AgentTask whose agentTaskSpec asks for Cloud Logging (loggingOption)."""
    spec = {"runnables": [script(text)], "loggingOption": {"labels": labels or LABELS}}
    return {"agentTaskSpec": spec, "taskSource": "USER", **fields}


def logging_env(emu: Emulator) -> dict[str, str]:
    return {"BATCH_AGENT_LOGGING_ENDPOINT": emu.url}


def payloads(entries: list[dict[str, Any]]) -> list[str]:
    return [e.get("textPayload", json.dumps(e.get("jsonPayload"))) for e in entries]


def test_300_lines_through_three_503s_arrive_once_each(make_emulator, start_agent) -> None:
    """150 stdout and 150 stderr lines, the first three writes answered 503: each line is in
    batch_task_logs exactly once, stdout INFO and stderr ERROR, labelled job_uid, task_id and
    the loggingOption labels, on a generic_task resource; the task succeeds."""
    emu = make_emulator(None)
    emu.logs.fail_next(3, status=503)
    name = emu.add_task(logged_task("for i in $(seq 1 150); do echo out-$i; echo err-$i >&2; done"))
    agent = start_agent(emu, "--once", **logging_env(emu))
    assert agent.wait(90) == 0, agent.log()
    assert final_event(emu, name)["taskState"] == "SUCCEEDED"
    entries = emu.logs.entries("batch_task_logs")
    assert sorted(payloads(entries)) == sorted(
        [f"out-{i}" for i in range(1, 151)] + [f"err-{i}" for i in range(1, 151)]
    )
    assert emu.logs.requests >= 4
    parts = parse_task_name(name)
    task_id = f"{parts.job}-{parts.group}-{parts.index}"
    for entry in entries:
        stream = "out" if entry["textPayload"].startswith("out-") else "err"
        assert entry["severity"] == ("INFO" if stream == "out" else "ERROR")
        assert entry["labels"] == {**LABELS, "job_uid": parts.job, "task_id": task_id}
        assert entry["resource"]["type"] == "generic_task"
        assert entry["resource"]["labels"]["task_id"] == task_id
        assert entry["logName"] == "projects/emulated-project/logs/batch_task_logs"
    outs = [e["textPayload"] for e in entries if e["textPayload"].startswith("out-")]
    assert outs == [f"out-{i}" for i in range(1, 151)]  # in order, by timestamp


def test_writes_sent_while_the_next_is_built_keep_every_line_once_in_order(
    make_emulator, start_agent
) -> None:
    """35,000 lines at once: writes of MAX_ENTRIES lines, each sent while the next one is
    read and built; the second write is refused twice (503), so the one built meanwhile is
    dropped and made again: every line is in Cloud Logging once, in order."""
    emu = make_emulator(None)
    emu.logs.fail_next(2, status=503, after=1)
    lines = 35_000
    name = emu.add_task(logged_task(f"seq 1 {lines}"))
    agent = start_agent(emu, "--once", **logging_env(emu))
    assert agent.wait(120) == 0, agent.log()
    assert final_event(emu, name)["taskState"] == "SUCCEEDED"
    assert payloads(emu.logs.entries("batch_task_logs")) == [str(i) for i in range(1, lines + 1)]
    assert emu.logs.requests >= 4 + 2  # 4 writes of task output, and the 2 refused


def test_output_of_control_characters_goes_in_writes_bounded_by_their_json(
    make_emulator, start_agent
) -> None:
    """20,000 lines of 150 control characters: 3 MB of output, ~20 MB of JSON (each
    character is `\\u0001`): the writes are cut by their JSON, not their output bytes, and
    every line is in Cloud Logging once, in order."""
    emu = make_emulator(None)
    lines, width = 20_000, 150
    script_text = (
        f'awk \'BEGIN {{ s = sprintf("%{width}s", ""); gsub(/ /, "\\001", s);'
        f" for (i = 1; i <= {lines}; i++) print i s }}'"
    )
    name = emu.add_task(logged_task(script_text))
    # The task's lines only (no agent log): each call is one write of its output.
    agent = start_agent(emu, "--once", BATCH_AGENT_CLOUD_LOGGING="tasks", **logging_env(emu))
    assert agent.wait(120) == 0, agent.log()
    assert final_event(emu, name)["taskState"] == "SUCCEEDED"
    want = [f"{i}" + "\x01" * width for i in range(1, lines + 1)]
    assert payloads(emu.logs.entries("batch_task_logs")) == want
    assert emu.logs.requests >= 5  # ~20 MB of JSON in writes of ~4 MiB (2 by output bytes)


@pytest.mark.parametrize(
    ("text", "lines", "kill_after"),
    [
        # a task printing as it goes: writes of what each round finds
        (
            "for i in $(seq 1 3000); do echo line-$i;"
            " [ $((i % 300)) = 0 ] && sleep 0.2; done; true",
            3000,
            300,
        ),
        # all at once: full writes, each sent while the next is made
        ("seq -f line-%.0f 1 60000", 60_000, 15_000),
    ],
    ids=["as-it-goes", "all-at-once"],
)
def test_kill_9_mid_shipping_loses_and_doubles_nothing(
    make_emulator, start_agent, text: str, lines: int, kill_after: int
) -> None:
    """The agent killed with SIGKILL while it ships a task's lines, then started again on
    the same state dir: after Cloud Logging's dedup, every line is there exactly once."""
    emu = make_emulator(None)
    name = emu.add_task(logged_task(text))
    first = start_agent(emu, **logging_env(emu))
    wait_until(lambda: emu.logs.received() >= kill_after, 60, "the first lines written")
    first.proc.send_signal(signal.SIGKILL)
    first.wait(10)
    second = start_agent(emu, "--once", **logging_env(emu))
    assert second.wait(120) == 0, second.log()
    assert final_event(emu, name)["taskState"] == "SUCCEEDED"
    got = payloads(emu.logs.entries("batch_task_logs"))
    assert sorted(got) == sorted(f"line-{i}" for i in range(1, lines + 1))
    assert emu.logs.received("batch_task_logs") >= lines


def test_denied_writes_warn_once_and_never_fail_the_task(make_emulator, start_agent) -> None:
    """403 PERMISSION_DENIED: the task still succeeds, one warning event says so, and once the
    permission is granted the lines arrive all the same."""
    emu = make_emulator(None, auto_delete=False)
    emu.logs.deny("permission")
    name = emu.add_task(logged_task("for i in 1 2 3; do echo hello-$i; sleep 0.5; done"))
    agent = start_agent(emu, **logging_env(emu))
    wait_until(lambda: emu.task_state(name) == "SUCCEEDED", 60, "the task to succeed")
    warning = wait_until(
        lambda: [e for e in emu.task_events(name) if "Cloud Logging refused" in e["description"]],
        30,
        "the warning event",
    )
    assert len(warning) == 1 and "logging.logEntries.create" in warning[0]["description"]
    assert "roles/logging.logWriter" in warning[0]["description"]
    emu.logs.deny(None)
    wait_until(lambda: len(emu.logs.entries("batch_task_logs")) == 3, 90, "the lines, later")
    assert payloads(emu.logs.entries("batch_task_logs")) == ["hello-1", "hello-2", "hello-3"]
    assert sum("Cloud Logging refused" in e["description"] for e in emu.task_events(name)) == 1
    assert agent.terminate() == 0


def test_json_lines_batch_resource_and_report_entries(make_emulator, start_agent) -> None:
    """A JSON object line becomes a jsonPayload with its severity; the response's
    useBatchMonitoredResource puts entries on batch.googleapis.com/Job; each report is an
    entry `report agent state: ...` in batch_agent_logs naming the task."""
    emu = make_emulator(None)
    emu.use_batch_monitored_resource(True)
    line = '{"severity": "warning", "message": "disk at 91%", "disk": "/data"}'
    name = emu.add_task(logged_task(f"echo '{line}'; echo plain >&2"))
    agent = start_agent(emu, "--once", **logging_env(emu))
    assert agent.wait(90) == 0, agent.log()
    structured, plain = emu.logs.entries("batch_task_logs")
    assert structured["jsonPayload"] == {"message": "disk at 91%", "disk": "/data"}
    assert structured["severity"] == "WARNING"
    assert plain["textPayload"] == "plain" and plain["severity"] == "ERROR"
    assert structured["resource"] == {
        "type": "batch.googleapis.com/Job",
        "labels": {
            "resource_container": "emulated-project",
            "location": emu.site.region,
            "job_id": parse_task_name(name).job,
        },
    }
    reports = [
        e["textPayload"]
        for e in emu.logs.entries("batch_agent_logs")
        if e.get("textPayload", "").startswith("report agent state: ")
    ]
    assert reports, emu.logs.entries("batch_agent_logs")
    assert any(f'task_id:"{name}"' in text for text in reports)
    assert all(text.startswith("report agent state: metadata:{") for text in reports)
    assert any("agent_info:{" in text and "state:AGENT_RUNNING" in text for text in reports)


def test_batch_internal_tasks_log_to_batch_agent_logs(make_emulator, start_agent) -> None:
    """A BATCH_INTERNAL task's output goes to batch_agent_logs, not batch_task_logs."""
    emu = make_emulator(None)
    emu.add_task(logged_task("echo internal-work", taskSource="BATCH_INTERNAL"))
    agent = start_agent(emu, "--once", **logging_env(emu))
    assert agent.wait(90) == 0, agent.log()
    assert emu.logs.entries("batch_task_logs") == []
    assert "internal-work" in payloads(emu.logs.entries("batch_agent_logs"))


def test_tasks_without_logging_option_are_not_shipped(make_emulator, start_agent) -> None:
    """In the default mode (auto) a task without loggingOption ships nothing, nor does the
    agent's own log; `--cloud-logging always` ships it."""
    emu = make_emulator(None)
    emu.add_task({"agentTaskSpec": {"runnables": [script("echo quiet")]}})
    agent = start_agent(emu, "--once", **logging_env(emu))
    assert agent.wait(90) == 0, agent.log()
    assert emu.logs.received() == 0
    emu.add_task({"agentTaskSpec": {"runnables": [script("echo loud")]}})
    again = start_agent(emu, "--once", "--cloud-logging", "always", **logging_env(emu))
    assert again.wait(90) == 0, again.log()
    assert payloads(emu.logs.entries("batch_task_logs")) == ["loud"]


def test_tasks_mode_ships_every_task_but_not_the_agent_log(make_emulator, start_agent) -> None:
    """`--cloud-logging tasks` (what `batch-agent local` asks for) ships a task's output even
    without loggingOption, and none of the agent's own log."""
    emu = make_emulator(None)
    emu.add_task({"agentTaskSpec": {"runnables": [script("echo loud")]}})
    agent = start_agent(emu, "--once", "--cloud-logging", "tasks", **logging_env(emu))
    assert agent.wait(90) == 0, agent.log()
    assert payloads(emu.logs.entries("batch_task_logs")) == ["loud"]
    assert emu.logs.received("batch_agent_logs") == 0


def test_secret_values_are_masked_in_cloud_logging(make_emulator, start_agent) -> None:
    """A secret the task prints is `***` in its Cloud Logging entries, as in the agent log."""
    version = "projects/123456789012/secrets/db/versions/1"
    emu = make_emulator(None, secrets={version: "hunter2-VALUE"})
    task = logged_task('echo "password is $DB"')
    task["agentTaskSpec"]["environment"] = {"secretVariables": {"DB": version}}
    emu.add_task(task)
    agent = start_agent(emu, "--once", **logging_env(emu))
    assert agent.wait(90) == 0, agent.log()
    assert payloads(emu.logs.entries("batch_task_logs")) == ["password is ***"]
    every = json.dumps(emu.logs.entries())
    assert "hunter2-VALUE" not in every


def test_a_deleted_task_waits_for_its_last_lines(make_emulator, start_agent) -> None:
    """DELETED while Cloud Logging is failing: the deletion waits (bounded) for the lines,
    which arrive once the API answers again, before the task's files are removed."""
    emu = make_emulator(None, auto_delete=False)
    name = emu.add_task(logged_task("echo last-words"))
    emu.logs.fail_next(1000, status=503)
    agent = start_agent(emu, **logging_env(emu))
    wait_until(lambda: emu.task_state(name) == "SUCCEEDED", 60, "the task to succeed")
    emu.delete_task(name)
    wait_until(lambda: emu.logs.requests >= 2, 30, "failed writes")
    emu.logs.clear_faults()
    wait_until(lambda: f"task {name}: deleted" in agent.log(), 60, "the deletion")
    assert payloads(emu.logs.entries("batch_task_logs")) == ["last-words"]
    assert agent.terminate() == 0
