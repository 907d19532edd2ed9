"""A job's logsPolicy and labels, end to end: the emulator turns them into what Batch's server
sends (`agentTaskSpec.loggingOption`, `useBatchMonitoredResource`) and the real agent, at its
default `--cloud-logging auto`, ships (or not) accordingly."""

from __future__ import annotations

from typing import Any

import pytest

from batch_agent.emulator import Emulator
from tests.helpers import final_event, script


def job_config(logs_policy: dict[str, Any] | None) -> dict[str, Any]:
    spec = {"runnables": [script("echo hello; echo oops >&2")]}
    config: dict[str, Any] = {
        "taskGroups": [{"taskCount": 1, "taskSpec": spec}],
        "labels": {"team": "genomics"},
    }
    if logs_policy is not None:
        config["logsPolicy"] = logs_policy
    return config


@pytest.mark.parametrize(
    ("generic", "resource"), [(False, "batch.googleapis.com/Job"), (True, "generic_task")]
)
def test_cloud_logging_job_labels_its_entries(
    make_emulator: Any, start_agent: Any, generic: bool, resource: str
) -> None:
    """CLOUD_LOGGING: every line in batch_task_logs carries the job's labels next to job_uid
    and task_id, on the monitored resource the job's cloudLoggingOption picks."""
    policy: dict[str, Any] = {"destination": "CLOUD_LOGGING"}
    if generic:
        policy["cloudLoggingOption"] = {"useGenericTaskMonitoredResource": True}
    emu: Emulator = make_emulator(job_config(policy))
    agent = start_agent(emu, "--once", BATCH_AGENT_LOGGING_ENDPOINT=emu.url)
    assert agent.wait(90) == 0, agent.log()
    assert final_event(emu, emu.task_names()[0])["taskState"] == "SUCCEEDED"
    entries = emu.logs.entries("batch_task_logs")
    lines = sorted((e["textPayload"], e["severity"]) for e in entries)
    assert lines == [("hello", "INFO"), ("oops", "ERROR")]
    task_id = f"{emu.job_uid}-group0-0"
    for entry in entries:
        assert entry["labels"] == {"team": "genomics", "job_uid": emu.job_uid, "task_id": task_id}
        assert entry["resource"]["type"] == resource


@pytest.mark.parametrize("policy", [None, {"destination": "PATH", "logsPath": "/tmp/unused"}])
def test_without_cloud_logging_the_agent_ships_nothing(
    make_emulator: Any, start_agent: Any, policy: dict[str, Any] | None
) -> None:
    """No CLOUD_LOGGING, no loggingOption: an agent left to decide ships no task output."""
    emu: Emulator = make_emulator(job_config(policy))
    agent = start_agent(emu, "--once", BATCH_AGENT_LOGGING_ENDPOINT=emu.url)
    assert agent.wait(90) == 0, agent.log()
    assert final_event(emu, emu.task_names()[0])["taskState"] == "SUCCEEDED"
    assert emu.logs.entries("batch_task_logs") == []
