"""The emulator over real HTTP on 127.0.0.1, with the real discovery document and Google clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_agent import discovery
from batch_agent.emulator import Emulator
from batch_agent.emulator.job import load_job, plan_assignments, reached_barrier

PARENT = "projects/123456789012/locations/us-central1"
PREFIX = PARENT + "/jobs/job-1/taskGroups/group0/tasks/"
SCRIPT = {"runnables": [{"script": {"text": "echo hi"}}]}


def job(count: int = 1, **group: Any) -> dict[str, Any]:
    return {"taskGroups": [{"taskCount": count, "taskSpec": SCRIPT, **group}]}


@pytest.fixture
def lines() -> list[str]:
    return []


@pytest.fixture
def make(lines: list[str]) -> Iterator[Any]:
    """Start emulators with the given arguments; stop them all at the end of the test."""
    started: list[Emulator] = []

    def make(job: dict[str, Any] | None = None, **kwargs: Any) -> Emulator:
        emulator = Emulator(job, log=lines.append, **kwargs)
        emulator.start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


def http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with urllib; returns status, headers and body, also for error statuses."""
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def meta(host: str, key: str, flavor: bool = True) -> tuple[int, dict[str, str], bytes]:
    headers = {"Metadata-Flavor": "Google"} if flavor else {}
    return http(f"http://{host}/computeMetadata/v1/{key}", headers=headers)


def post(emu: Emulator, body: object, vm: int | None = 0, parent: str = PARENT) -> Any:
    """POST a report as VM `vm` (by its token); returns (status, parsed JSON response)."""
    headers = {"Content-Type": "application/json"}
    if vm is not None:
        headers["Authorization"] = f"Bearer emu-token-vm-{vm}"
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, answer = http(f"{emu.url}v1/{parent}/state:report", raw, headers)
    return status, json.loads(answer)


def task_info(name: str, state: str, runnable: int = 0, description: str = "") -> dict[str, Any]:
    event = {"type": "STATUS_CHANGED", "eventTime": "2026-11-26T07:06:23Z", "taskState": state}
    if description:
        event["description"] = description
    return {
        "taskId": name,
        "runnable": str(runnable),
        "taskStatus": {"state": state, "statusEvents": [event]},
    }


def report(*tasks: dict[str, Any], state: str = "AGENT_RUNNING") -> dict[str, Any]:
    return {
        "agentInfo": {"state": state, "reportTime": "2026-11-26T07:06:23Z", "tasks": list(tasks)}
    }


def sent(response: dict[str, Any]) -> dict[str, str]:
    """Task name -> intendedState of a response, after checking it against the schema."""
    assert discovery.validate("ReportAgentStateResponse", response) == []
    return {t["task"]: t["intendedState"] for t in response["tasks"]}


# -- job configs, scheduling and barriers (pure) -----------------------------------------------


def test_job_config_accepts_snake_case_and_plain_numbers() -> None:
    """snake_case keys become camelCase, but environment variable names stay as written."""
    plan = load_job(
        {
            "task_groups": [
                {
                    "task_count": 2,
                    "task_count_per_node": 1,
                    "task_spec": {
                        "runnables": [{"script": {"text": "true"}}],
                        "max_run_duration": "60s",
                        "environment": {"variables": {"my_var": "1"}},
                    },
                }
            ]
        }
    )
    assert plan.task_count == 2 and plan.parallelism == 2 and plan.task_count_per_node == 1
    assert plan.specs[0]["maxRunDuration"] == "60s"
    assert plan.specs[0]["environment"] == {"variables": {"my_var": "1"}}


def test_task_environments_set_count_and_variables() -> None:
    """taskEnvironments[i] is merged over the task spec's variables for task i."""
    spec = {**SCRIPT, "environment": {"variables": {"A": "spec", "B": "spec"}}}
    group = {"taskSpec": spec, "taskEnvironments": [{"variables": {"A": str(i)}} for i in range(3)]}
    plan = load_job({"taskGroups": [group]})
    assert plan.task_count == 3
    assert plan.specs[2]["environment"]["variables"] == {"A": "2", "B": "spec"}


@pytest.mark.parametrize(
    "config",
    [{"taskGroups": []}, {"taskGroups": [{"taskSpec": {"runnables": "x"}}]}, {"bogus": 1}],
)
def test_bad_job_config_is_a_value_error(config: dict[str, Any]) -> None:
    """A job config that Batch would refuse is refused with the reason."""
    with pytest.raises(ValueError, match="job config"):
        load_job(config)


@pytest.mark.parametrize(
    ("pending", "active", "parallelism", "per_vm", "expected"),
    [
        ([0, 1, 2], [0], 2, 3, [(0, 0), (1, 0)]),
        ([0, 1, 2], [0, 0], 3, 1, [(0, 0), (1, 1)]),
        ([2, 3], [1, 0], 4, 2, [(2, 1), (3, 0)]),
        ([5], [2], 2, 5, []),
        ([], [0], 2, 2, []),
    ],
)
def test_plan_assignments(
    pending: list[int],
    active: list[int],
    parallelism: int,
    per_vm: int,
    expected: list[tuple[int, int]],
) -> None:
    """Tasks go, in order, to the least busy VM within parallelism and per-VM limits."""
    assert plan_assignments(pending, active, parallelism, per_vm) == expected


@pytest.mark.parametrize(
    ("barriers", "runnables", "expected"),
    [
        ({2}, [2, 2], 2),
        ({2}, [2, 1], 0),
        ({2, 4}, [5, 4, 4], 4),
        ({2, 4}, [3, 5], 2),
        (set(), [9, 9], 0),
        ({1}, [], 0),
    ],
)
def test_reached_barrier(barriers: set[int], runnables: list[int], expected: int) -> None:
    """The highest barrier every task has reached or passed, 0 if none."""
    assert reached_barrier(barriers, runnables) == expected


# -- metadata ---------------------------------------------------------------------------------


def test_metadata_answers_with_flavor_header(make: Any) -> None:
    """Keys answer with Metadata-Flavor: Google; text as text/plain, JSON as application/json."""
    emu = make(vms=2)
    status, headers, body = meta(emu.metadata_host, "instance/name")
    assert (status, body, headers["Metadata-Flavor"]) == (200, b"vm-0", "Google")
    assert headers["Content-Type"] == "text/plain"
    expected = {
        "instance/zone": b"projects/123456789012/zones/us-central1-a",
        "instance/machine-type": b"projects/123456789012/machineTypes/e2-standard-4",
        "instance/attributes/created-by": (
            b"projects/123456789012/regions/us-central1/instanceGroupManagers/job-1-group0-mig"
        ),
        "project/numeric-project-id": b"123456789012",
        "project/project-id": b"emulated-project",
        "universe/universe-domain": b"googleapis.com",
        "instance/preempted": b"FALSE",
        "instance/name?alt=json": b'"vm-0"',
    }
    for key, value in expected.items():
        assert meta(emu.metadata_host, key)[::2] == (200, value), key
    status, headers, body = meta(
        emu.metadata_host, "instance/service-accounts/default/?recursive=true"
    )
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["scopes"] == ["https://www.googleapis.com/auth/cloud-platform"]
    assert meta(emu.vms[1].metadata_host, "instance/name")[2] == b"vm-1"
    ids = {meta(vm.metadata_host, "instance/id")[2].decode() for vm in emu.vms}
    assert ids == {vm.instance_id for vm in emu.vms} and len(ids) == 2
    token = json.loads(meta(emu.vms[1].metadata_host, "instance/service-accounts/default/token")[2])
    assert token == {"access_token": "emu-token-vm-1", "expires_in": 3599, "token_type": "Bearer"}


def test_metadata_refuses_without_flavor_and_404s_unknown_keys(make: Any) -> None:
    """No Metadata-Flavor header is 403; an unknown key is 404; the root answers pings."""
    emu = make()
    assert meta(emu.metadata_host, "instance/name", flavor=False)[0] == 403
    status, headers, _ = meta(emu.metadata_host, "instance/nope")
    assert (status, headers["Metadata-Flavor"]) == (404, "Google")
    status, headers, _ = http(f"http://{emu.metadata_host}/")
    assert (status, headers["Metadata-Flavor"]) == (200, "Google")


def test_preempted_wait_for_change(make: Any) -> None:
    """A wait_for_change request returns once the value changes, or after timeout_sec."""
    emu = make()
    status, headers, body = meta(
        emu.metadata_host, "instance/preempted?wait_for_change=true&timeout_sec=0.05"
    )
    assert (status, body) == (200, b"FALSE")
    etag = headers["ETag"]
    answers: list[bytes] = []
    key = f"instance/preempted?wait_for_change=true&last_etag={etag}"
    waiter = threading.Thread(target=lambda: answers.append(meta(emu.metadata_host, key)[2]))
    waiter.start()
    emu.set_preempted(0, True)
    waiter.join(timeout=10)
    assert answers == [b"TRUE"]


def test_google_auth_and_googleapiclient_work_against_the_emulator(make: Any) -> None:
    """Compute Engine credentials refresh from the emulator and the discovery client reports."""
    emu = make(job(1))
    program = textwrap.dedent(
        """
        import json, sys
        import google_auth_httplib2, httplib2
        from google.auth import compute_engine
        from googleapiclient.discovery import build

        creds = compute_engine.Credentials()
        creds.refresh(google_auth_httplib2.Request(httplib2.Http()))
        service = build("batch", "v1", static_discovery=True, credentials=creds,
                        client_options={"api_endpoint": sys.argv[1]})
        body = {"agentInfo": {"state": "AGENT_STARTING"}, "metadata": {"instance": "vm-0"}}
        response = service.projects().locations().state().report(
            parent=sys.argv[2], body=body).execute()
        print(json.dumps({"token": creds.token, "email": creds.service_account_email,
                          "response": response}))
        """
    )
    env = {**os.environ, "GCE_METADATA_HOST": emu.metadata_host}
    done = subprocess.run(
        [sys.executable, "-c", program, emu.url, PARENT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["token"] == "emu-token-vm-0"
    assert result["email"] == "123456789012-compute@developer.gserviceaccount.com"
    assert sent(result["response"]) == {PREFIX + "0": "ASSIGNED"}
    assert [r.vm for r in emu.reports] == [0]


# -- state:report -----------------------------------------------------------------------------


def test_job_runs_to_done_with_parallelism_and_auto_delete(make: Any, lines: list[str]) -> None:
    """Tasks are handed out within parallelism; finished ones are DELETED, then dropped."""
    emu = make(job(3, parallelism=2), default_report_interval="7s")
    t0, t1, t2 = (PREFIX + str(i) for i in range(3))
    status, response = post(emu, report(state="AGENT_STARTING"))
    assert status == 200 and sent(response) == {t0: "ASSIGNED", t1: "ASSIGNED"}
    assert response["defaultReportInterval"] == "7s" and response["minReportInterval"] == "1s"
    assert {t["reachedBarrier"] for t in response["tasks"]} == {"0"}
    assert response["tasks"][0]["spec"] == SCRIPT
    assert response["tasks"][0]["taskSource"] == "USER"

    _, response = post(emu, report(task_info(t0, "SUCCEEDED", 1, "done"), task_info(t1, "RUNNING")))
    assert sent(response) == {t0: "DELETED", t1: "ASSIGNED", t2: "ASSIGNED"}
    assert emu.is_deleted(t0) and not emu.is_deleted(t1)
    assert emu.task_state(t0) == "SUCCEEDED" and emu.task_runnable(t0) == 1
    assert emu.task_events(t0)[0]["description"] == "done"
    assert f"task 0 ({t0}): UNREPORTED -> SUCCEEDED: done" in lines
    assert not emu.job_done

    _, response = post(emu, report(task_info(t1, "FAILED"), task_info(t2, "SUCCEEDED")))
    assert sent(response) == {t1: "DELETED", t2: "DELETED"}
    assert emu.job_done and emu.job_failed and emu.wait_until_done(0)
    _, response = post(emu, report())
    assert sent(response) == {}
    assert emu.task_names() == [t0, t1, t2]
    assert [r.body["agentInfo"]["state"] for r in emu.reports] == ["AGENT_STARTING"] + [
        "AGENT_RUNNING"
    ] * 3


def test_tasks_spread_over_vms(make: Any) -> None:
    """With two VMs each gets its share; a VM without a token is found by metadata.instance."""
    emu = make(job(2), vms=2)
    _, response = post(emu, report(), vm=0)
    assert sent(response) == {PREFIX + "0": "ASSIGNED"}
    _, response = post(emu, {**report(), "metadata": {"instance": "vm-1"}}, vm=None)
    assert sent(response) == {PREFIX + "1": "ASSIGNED"}
    assert [r.vm for r in emu.reports] == [0, 1]


def test_barrier_is_reached_when_every_task_is_at_it(make: Any) -> None:
    """reachedBarrier rises to k once every task of the group reported runnable >= k."""
    spec = {"runnables": [{"script": {"text": "true"}}, {"barrier": {"name": "b"}}]}
    emu = make({"taskGroups": [{"taskCount": 2, "taskSpec": spec}]})
    t0, t1 = PREFIX + "0", PREFIX + "1"
    _, response = post(emu, report(task_info(t0, "RUNNING", 2), task_info(t1, "RUNNING", 1)))
    assert {t["reachedBarrier"] for t in response["tasks"]} == {"0"}
    _, response = post(emu, report(task_info(t0, "RUNNING", 2), task_info(t1, "RUNNING", 2)))
    assert {t["reachedBarrier"] for t in response["tasks"]} == {"2"}


def test_invalid_report_is_400_with_every_error(make: Any, lines: list[str]) -> None:
    """A report that breaks the schema is answered 400 INVALID_ARGUMENT, recorded, not applied."""
    emu = make(job(1))
    body = {"agentInfo": {"state": "RUNING", "foo": 1}}
    status, response = post(emu, body)
    message = (
        'agentInfo.state: "RUNING" is not one of AGENT_STATE_UNSPECIFIED, AGENT_STARTING, '
        "AGENT_RUNNING, AGENT_STOPPED; agentInfo.foo: unknown field"
    )
    assert (status, response) == (
        400,
        {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}},
    )
    assert emu.invalid_reports == [(body, message.split("; "))]
    assert emu.reports == []
    assert lines == [f"invalid report: {message}"]
    status, response = post(emu, b"{not json")
    assert status == 400 and "not JSON" in response["error"]["message"]


@pytest.mark.parametrize(
    ("parent", "status"),
    [
        ("projects/emulated-project/locations/us-central1", 400),
        ("projects/999/locations/us-central1", 404),
        ("projects/123456789012/locations/europe-west1", 404),
    ],
)
def test_parent_must_be_numeric_project_and_region(make: Any, parent: str, status: int) -> None:
    """The parent names the project by number and the region of the VM's zone."""
    emu = make()
    assert post(emu, report(), parent=parent)[0] == status


def test_fail_next_and_raw_responses(make: Any) -> None:
    """fail_next answers Google-style errors without applying; raw bytes replace one answer."""
    emu = make(job(1))
    emu.fail_next(2, status=429)
    for _ in range(2):
        assert post(emu, report()) == (
            429,
            {
                "error": {
                    "code": 429,
                    "message": "emulated failure (HTTP 429)",
                    "status": "RESOURCE_EXHAUSTED",
                }
            },
        )
    assert emu.reports == []
    emu.respond_raw_next(b"[1, 2", status=200)
    status, _, body = http(
        f"{emu.url}v1/{PARENT}/state:report",
        json.dumps(report()).encode(),
        {"Authorization": "Bearer emu-token-vm-0"},
    )
    assert (status, body) == (200, b"[1, 2")
    assert len(emu.reports) == 1
    emu.set_intervals(default="3s", minimum="0.5s")
    _, response = post(emu, report())
    assert (response["defaultReportInterval"], response["minReportInterval"]) == ("3s", "0.5s")


def test_cancel_delete_and_raw_tasks(make: Any) -> None:
    """cancel/delete change intendedState; add_task sends its JSON unchecked and names it."""
    emu = make(job(2), auto_delete=False)
    t0, t1 = PREFIX + "0", PREFIX + "1"
    raw = emu.add_task({"spec": {"runnables": [{"script": 5}]}})
    assert raw == PREFIX + "2"
    emu.cancel_task(t0)
    emu.delete_task(t1)
    _, response = post(emu, report())
    assert {t["task"]: t["intendedState"] for t in response["tasks"]} == {
        t0: "CANCELLED",
        t1: "DELETED",
        raw: "ASSIGNED",
    }
    assert response["tasks"][2]["spec"] == {"runnables": [{"script": 5}]}
    _, response = post(emu, report(task_info(t0, "FAILED"), task_info(raw, "SUCCEEDED")))
    assert {t["task"]: t["intendedState"] for t in response["tasks"]} == {
        t0: "CANCELLED",
        raw: "ASSIGNED",
    }
    assert emu.is_deleted(t1) and not emu.is_deleted(t0) and emu.job_done


# -- command line ------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batch_agent.emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli_post(endpoint: str, body: dict[str, Any]) -> None:
    headers = {"Authorization": "Bearer emu-token-vm-0", "Content-Type": "application/json"}
    url = f"{endpoint}v1/{PARENT}/state:report"
    assert http(url, json.dumps(body).encode(), headers)[0] == 200


@pytest.mark.parametrize(("outcome", "code"), [("SUCCEEDED", 0), ("FAILED", 1)])
def test_cli_exits_when_done(tmp_path: Path, outcome: str, code: int) -> None:
    """`--exit-when-done` exits 0 after the job succeeded and 1 after it failed."""
    config = tmp_path / "job.json"
    config.write_text(json.dumps(job(1)))
    with run_cli("--exit-when-done", str(config)) as proc:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().removeprefix("endpoint: ").strip()
        assert proc.stdout.readline().startswith("metadata: 127.0.0.1:")
        cli_post(endpoint, report(task_info(PREFIX + "0", outcome, 1)))
        assert proc.wait(timeout=30) == code
        assert f"task 0 ({PREFIX}0): UNREPORTED -> {outcome}" in proc.stdout.read()


def test_cli_stops_on_sigterm() -> None:
    """Without --exit-when-done the emulator serves until SIGTERM, then exits 0."""
    with run_cli("--vms", "2") as proc:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert [line.split(":")[0] for line in lines] == ["endpoint", "metadata", "metadata"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_cli_refuses_a_bad_job_file(tmp_path: Path) -> None:
    """An unreadable or invalid job config is a usage error (2)."""
    config = tmp_path / "job.json"
    config.write_text('{"taskGroups": []}')
    with run_cli(str(config)) as proc:
        assert proc.wait(timeout=30) == 2
        assert proc.stderr is not None and "job config" in proc.stderr.read()


def test_start_on_a_busy_port_raises_and_leaves_nothing_open() -> None:
    """A port already in use is an OSError from start(); stop() afterwards is harmless."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        emulator = Emulator(port=busy.getsockname()[1], log=None)
        with pytest.raises(OSError):
            emulator.start()
        emulator.stop()
