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
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_agent import discovery
from batch_agent.emulator import Emulator, service, tasknames
from batch_agent.emulator.job import JobConfigError, load_job, plan_assignments, reached_barrier
from batch_agent.emulator.preemption import Preemption
from batch_agent.names import TaskName, parse_task_name

PARENT = "projects/123456789012/locations/us-central1"
PREFIX = PARENT + "/jobs/job-1/taskGroups/group0/tasks/"  # + INDEX: a Task's resource name
SCRIPT = {"runnables": [{"script": {"text": "echo hi"}}]}


def name(emu: Emulator, index: int, attempt: int = 0) -> str:
    """The name attempt `attempt` of task `index` is sent under."""
    return tasknames.agent_name(emu.job_uid, index, attempt)


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


# -- task names (pure) -------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "attempt"), [(0, 0), (2, 1), (999_999_999, 999_999_999)])
def test_issued_names_read_the_same_to_the_agent(index: int, attempt: int) -> None:
    """The agent's parser reads the job uid, group, index and attempt the emulator put in."""
    uid = tasknames.new_job_uid()
    issued = tasknames.agent_name(uid, index, attempt)
    assert issued == f"task/{uid}-group0-{index}/{attempt}/0"
    assert tasknames.parse(issued) == tasknames.Parts(uid, "group0", index, attempt)
    assert parse_task_name(issued) == TaskName(
        job=uid, group="group0", index=index, attempt=attempt
    )


def test_resource_names_read_the_same_to_the_agent() -> None:
    """A Task's resource name: both parsers read its job id, group and index, and no attempt."""
    resource = tasknames.resource_name("123", "us-central1", "job-1", 7)
    assert resource == "projects/123/locations/us-central1/jobs/job-1/taskGroups/group0/tasks/7"
    assert tasknames.parse(resource) == tasknames.Parts("job-1", "group0", 7, None)
    assert parse_task_name(resource) == TaskName(job="job-1", group="group0", index=7)


@pytest.mark.parametrize(
    "odd", ["", "task/j-1-group0-x/0/0", "task/j-1-group0-1/0", "tasks/7", "task/-1/0/0"]
)
def test_other_names_have_no_parts_for_either(odd: str) -> None:
    """A name in neither form has no known parts, for the emulator as for the agent."""
    assert tasknames.parse(odd) is None
    assert parse_task_name(odd) == TaskName()


def test_job_uid_has_batch_shape() -> None:
    """A job uid is `j-` and a UUID, new for each job."""
    uid = tasknames.new_job_uid()
    assert uid.startswith("j-") and str(uuid.UUID(uid[2:])) == uid[2:]
    assert tasknames.new_job_uid() != uid


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


def raw_exchange(host: str, request: bytes) -> bytes:
    """Send `request` as it is on a new connection; everything the emulator answers."""
    address, port = host.rsplit(":", 1)
    with socket.create_connection((address, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_malformed_requests_get_an_http_error_and_threads_are_reused(make: Any) -> None:
    """A request line that is not HTTP is 400, a method other than GET and POST 501, a bad
    Content-Length 400; and a hundred requests one after the other take no thread each."""
    emu = make()
    assert raw_exchange(emu.metadata_host, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    answer = raw_exchange(emu.metadata_host, b"PUT / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 501 ")
    answer = raw_exchange(emu.metadata_host, b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400 ")
    before = threading.active_count()
    for _ in range(100):
        assert meta(emu.metadata_host, "instance/name")[0] == 200
    assert threading.active_count() <= before + 2


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


def test_preempted_wait_for_change_answers_at_once_for_a_stale_etag(make: Any) -> None:
    """A wait_for_change whose last_etag is not the current value's answers without waiting."""
    emu = make()
    _, headers, _ = meta(emu.metadata_host, "instance/preempted")
    emu.set_preempted(0, True)
    key = f"instance/preempted?wait_for_change=true&last_etag={headers['ETag']}"
    status, changed, body = meta(emu.metadata_host, key)  # would block for a minute if it waited
    assert (status, body) == (200, b"TRUE")
    assert changed["ETag"] != headers["ETag"]


def test_preemption_release_answers_waiters_now_and_later() -> None:
    """release() (the emulator stopping) ends a wait_for_change and every one after it."""
    flags = Preemption(2)
    answers: list[bool] = []
    waiter = threading.Thread(target=lambda: answers.append(flags.wait_for_change(1, None, "60")))
    waiter.start()
    flags.release()
    waiter.join(timeout=10)
    assert answers == [False]
    flags.set(0, True)
    assert flags.wait_for_change(0, None, None) is True


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
    assert sent(result["response"]) == {name(emu, 0): "ASSIGNED"}
    assert [r.vm for r in emu.reports] == [0]


# -- state:report -----------------------------------------------------------------------------


def test_job_runs_to_done_with_parallelism_and_auto_delete(make: Any, lines: list[str]) -> None:
    """Tasks are handed out within parallelism; finished ones are DELETED, then dropped."""
    emu = make(job(3, parallelism=2), default_report_interval="7s")
    t0, t1, t2 = (name(emu, i) for i in range(3))
    status, response = post(emu, report(state="AGENT_STARTING"))
    assert status == 200 and sent(response) == {t0: "ASSIGNED", t1: "ASSIGNED"}
    assert response["defaultReportInterval"] == "7s" and response["minReportInterval"] == "1s"
    assert {t["reachedBarrier"] for t in response["tasks"]} == {"0"}
    batch_vars = {"BATCH_TASK_COUNT": "3", "BATCH_TASK_RETRY_ATTEMPT": "0"}
    assert response["tasks"][0]["spec"] == {**SCRIPT, "environment": {"variables": batch_vars}}
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
    assert sent(response) == {name(emu, 0): "ASSIGNED"}
    _, response = post(emu, {**report(), "metadata": {"instance": "vm-1"}}, vm=None)
    assert sent(response) == {name(emu, 1): "ASSIGNED"}
    assert [r.vm for r in emu.reports] == [0, 1]


def test_barrier_is_reached_when_every_task_is_at_it(make: Any) -> None:
    """reachedBarrier rises to k once every task of the group reported runnable >= k."""
    spec = {"runnables": [{"script": {"text": "true"}}, {"barrier": {"name": "b"}}]}
    emu = make({"taskGroups": [{"taskCount": 2, "taskSpec": spec}]})
    t0, t1 = name(emu, 0), name(emu, 1)
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


def test_busy_min_report_interval_follows_the_vms_work(make: Any) -> None:
    """A VM with a task to run or report is answered the busy minReportInterval; idle, the other."""
    intervals = {"default_report_interval": "2s", "min_report_interval": "1s"}
    emu = make(job(1), **intervals, busy_min_report_interval="0s")
    answered = ("defaultReportInterval", "minReportInterval")
    t0 = name(emu, 0)
    _, response = post(emu, report())
    assert sent(response) == {t0: "ASSIGNED"}
    assert tuple(response[k] for k in answered) == ("2s", "0s")
    _, response = post(emu, report(task_info(t0, "SUCCEEDED")))
    assert sent(response) == {t0: "DELETED"}
    assert tuple(response[k] for k in answered) == ("2s", "0s")
    _, response = post(emu, report())  # the agent forgot the task: nothing left to change
    assert response.get("tasks", []) == []
    assert tuple(response[k] for k in answered) == ("2s", "1s")


def test_cancel_delete_and_raw_tasks(make: Any) -> None:
    """cancel/delete change intendedState; add_task sends its JSON unchecked and names it."""
    emu = make(job(2), auto_delete=False)
    t0, t1 = name(emu, 0), name(emu, 1)
    raw = emu.add_task({"spec": {"runnables": [{"script": 5}]}})
    assert raw == name(emu, 2)
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


def cli_post(endpoint: str, body: dict[str, Any]) -> Any:
    """POST a report as VM 0; returns the parsed response."""
    headers = {"Authorization": "Bearer emu-token-vm-0", "Content-Type": "application/json"}
    url = f"{endpoint}v1/{PARENT}/state:report"
    status, _, answer = http(url, json.dumps(body).encode(), headers)
    assert status == 200
    return json.loads(answer)


@pytest.mark.parametrize(("outcome", "code"), [("SUCCEEDED", 0), ("FAILED", 1)])
def test_cli_exits_when_done(tmp_path: Path, outcome: str, code: int) -> None:
    """`--exit-when-done` exits 0 after the job succeeded and 1 after it failed."""
    config = tmp_path / "job.json"
    config.write_text(json.dumps(job(1)))
    with run_cli("--exit-when-done", str(config)) as proc:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().removeprefix("endpoint: ").strip()
        assert proc.stdout.readline().startswith("metadata: 127.0.0.1:")
        (task,) = cli_post(endpoint, report())["tasks"]
        parts = tasknames.parse(task["task"])
        assert parts is not None and (parts.group, parts.index, parts.attempt) == ("group0", 0, 0)
        cli_post(endpoint, report(task_info(task["task"], outcome, 1)))
        assert proc.wait(timeout=30) == code
        assert f"task 0 ({task['task']}): UNREPORTED -> {outcome}" in proc.stdout.read()


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


# -- Batch service rules (pure) ----------------------------------------------------------------

FAIL_ON_2 = [{"action": "FAIL_TASK", "actionCondition": {"exitCodes": [2]}}]
RETRY_ON_5 = [{"action": "RETRY_TASK", "actionCondition": {"exitCodes": [5, 6]}}]


@pytest.mark.parametrize(
    ("exit_code", "done", "max_retries", "policies", "expected"),
    [
        (1, 0, 0, [], False),  # maxRetryCount 0: never
        (1, 0, 3, [], True),
        (1, 3, 3, [], False),  # budget spent
        (2, 0, 3, FAIL_ON_2, False),  # FAIL_TASK on a match stops retries
        (1, 0, 3, FAIL_ON_2, True),  # ... and retries the others
        (6, 1, 3, RETRY_ON_5, True),  # RETRY_TASK retries matches
        (1, 0, 3, RETRY_ON_5, False),  # ... and only them
        (None, 0, 3, RETRY_ON_5, False),  # no exit code matches nothing
        (None, 0, 3, FAIL_ON_2, True),
        (5, 3, 3, RETRY_ON_5, False),  # a policy never exceeds maxRetryCount
    ],
)
def test_should_retry(
    exit_code: int | None,
    done: int,
    max_retries: int,
    policies: list[dict[str, Any]],
    expected: bool,
) -> None:
    """maxRetryCount bounds retries; lifecyclePolicies pick which exit codes are retried."""
    assert service.should_retry(exit_code, done, max_retries, policies) is expected


@pytest.mark.parametrize(
    ("current", "facts", "expected"),
    [
        ("QUEUED", {}, []),
        ("QUEUED", {"scheduled": True}, ["SCHEDULED"]),
        ("QUEUED", {"done": True}, ["SCHEDULED", "RUNNING", "SUCCEEDED"]),
        ("SCHEDULED", {"running": True}, ["RUNNING"]),
        ("RUNNING", {"done": True, "failed": True}, ["FAILED"]),
        ("RUNNING", {"running": True}, []),
        ("RUNNING", {"cancelling": True}, ["CANCELLATION_IN_PROGRESS"]),
        ("CANCELLATION_IN_PROGRESS", {"cancelling": True}, []),
        ("CANCELLATION_IN_PROGRESS", {"cancelling": True, "done": True}, ["CANCELLED"]),
        ("SUCCEEDED", {"cancelling": True, "done": True}, []),
    ],
)
def test_job_transitions(current: str, facts: dict[str, bool], expected: list[str]) -> None:
    """A job passes QUEUED -> SCHEDULED -> RUNNING without skipping, and never leaves an end."""
    flags = {"scheduled": False, "running": False, "done": False, "failed": False}
    flags["cancelling"] = False
    assert service.job_transitions(current, **(flags | facts)) == expected


def test_job_event_wording() -> None:
    """Job events use Batch's sentences; a failed job quotes the failing task's event."""
    job_name = "projects/1/locations/r/jobs/j"
    assert service.job_event(job_name, "QUEUED", "SCHEDULED") == (
        f"Job state is set from QUEUED to SCHEDULED for job {job_name}."
    )
    failed = service.job_event(job_name, "RUNNING", "FAILED", failed_task=(2, "Task x."))
    assert failed.endswith(
        "Job failed due to task failure. Specifically, task with index 2 failed due to the"
        ' following task event: "Task x."'
    )


def test_hosts_file_batch_variables_and_run_times() -> None:
    """One hosts line per VM; BATCH_* variables as the server passes them; event times."""
    assert service.hosts_file(["127.0.0.1", "127.0.0.1"]) == "127.0.0.1\n127.0.0.1\n"
    assert service.batch_variables(3, 1, None) == {
        "BATCH_TASK_COUNT": "3",
        "BATCH_TASK_RETRY_ATTEMPT": "1",
    }
    assert service.batch_variables(1, 0, "/h")["BATCH_HOSTS_FILE"] == "/h"
    events = [
        {"taskState": "ASSIGNED", "eventTime": "2026-01-01T00:00:00Z"},
        {"taskState": "RUNNING", "eventTime": "2026-01-01T00:00:01Z"},
        {"taskState": "FAILED", "eventTime": "2026-01-01T00:00:03.5Z"},
    ]
    began, ended = service.run_times(events)
    assert began is not None and ended is not None and ended - began == 2.5
    assert service.run_times([{"eventTime": "junk", "taskState": "RUNNING"}]) == (None, None)
    assert service.exit_code_of([{"taskExecution": {"exitCode": 3}}, {}]) == 3


def test_not_applied_fields_are_named() -> None:
    """Fields a local run ignores are listed by path; applied ones are not."""
    config = {
        "taskGroups": [
            {"taskSpec": {**SCRIPT, "computeResource": {"cpuMilli": 1}}, "permissiveSsh": True}
        ],
        "allocationPolicy": {},
        "logsPolicy": {"destination": "CLOUD_LOGGING"},
    }
    assert load_job(config).not_applied == (
        "allocationPolicy",
        "taskGroups[0].permissiveSsh",
        "taskGroups[0].taskSpec.computeResource",
    )
    assert load_job({**job(2), "labels": {"team": "x"}}).not_applied == ()


def test_reserved_job_labels_are_refused() -> None:
    """Label names starting with goog- or google- are Batch's predefined ones."""
    with pytest.raises(JobConfigError) as error:
        load_job({**job(), "labels": {"goog-batch-x": "1", "ok": "2"}}, strict=True)
    assert error.value.problems == [
        "labels.goog-batch-x: names starting with goog- or google- are Batch's own"
    ]


@pytest.mark.parametrize(
    ("logs_policy", "logging_option", "batch_resource"),
    [
        ({"destination": "CLOUD_LOGGING"}, {"labels": {"team": "genomics"}}, True),
        (
            {
                "destination": "CLOUD_LOGGING",
                "cloudLoggingOption": {"useGenericTaskMonitoredResource": True},
            },
            {"labels": {"team": "genomics"}},
            False,
        ),
        ({"destination": "PATH", "logsPath": "/tmp/x"}, None, True),
        (None, None, True),
    ],
)
def test_logs_policy_becomes_logging_option_and_monitored_resource(
    make: Any,
    logs_policy: dict[str, Any] | None,
    logging_option: dict[str, Any] | None,
    batch_resource: bool,
) -> None:
    """CLOUD_LOGGING sends each task an agentTaskSpec.loggingOption with the job's labels; every
    answer says useBatchMonitoredResource, false only for useGenericTaskMonitoredResource."""
    config: dict[str, Any] = {**job(2), "labels": {"team": "genomics"}}
    if logs_policy is not None:
        config["logsPolicy"] = logs_policy
    emu = make(config)
    _, response = post(emu, report())
    assert sent(response) == {name(emu, 0): "ASSIGNED", name(emu, 1): "ASSIGNED"}
    assert response["useBatchMonitoredResource"] is batch_resource
    for task in response["tasks"]:
        assert task["spec"]["runnables"] == SCRIPT["runnables"]
        if logging_option is None:
            assert "agentTaskSpec" not in task
        else:
            assert task["agentTaskSpec"] == {"loggingOption": logging_option}


def test_cloud_logging_without_labels_still_sends_a_logging_option(make: Any) -> None:
    """No job labels: the loggingOption is there, empty, so the agent still ships."""
    emu = make({**job(), "logsPolicy": {"destination": "CLOUD_LOGGING"}})
    _, response = post(emu, report())
    assert response["tasks"][0]["agentTaskSpec"] == {"loggingOption": {}}
    _, bare = post(make(None), report())  # no job config: nothing to say
    assert "useBatchMonitoredResource" not in bare


def test_strict_checks_only_when_asked() -> None:
    """Without strict a runnable the agent must refuse still reaches it (agent tests)."""
    config = {"taskGroups": [{"taskSpec": {"runnables": [{"script": {}}]}}]}
    assert load_job(config).task_count == 1
    with pytest.raises(JobConfigError) as error:
        load_job(config, strict=True)
    assert error.value.problems == [
        'taskGroups[0].taskSpec.runnables[0].script: needs "text" or "path"'
    ]


# -- retries, job states, hosts file over HTTP -------------------------------------------------


def exit_codes(events: list[dict[str, Any]]) -> list[int]:
    return [e["taskExecution"]["exitCode"] for e in events if "taskExecution" in e]


def failed(task: str, code: int) -> dict[str, Any]:
    info = task_info(task, "FAILED", 1, f"exit {code}")
    info["taskStatus"]["statusEvents"][0]["taskExecution"] = {"exitCode": code}
    return info


def test_failed_attempt_is_deleted_then_assigned_again_with_the_next_attempt(make: Any) -> None:
    """A retried task is DELETED; once unreported it comes back as attempt + 1, under the name
    with RETRIES + 1; its resource name and earlier names still find it."""
    spec = {**SCRIPT, "maxRetryCount": 1}
    emu = make({"taskGroups": [{"taskSpec": spec}]})
    t0, retry = name(emu, 0), name(emu, 0, 1)
    _, response = post(emu, report(task_info(t0, "RUNNING", 1)))
    assert (
        response["tasks"][0]["spec"]["environment"]["variables"]["BATCH_TASK_RETRY_ATTEMPT"] == "0"
    )
    _, response = post(emu, report(failed(t0, 1)))
    assert sent(response) == {t0: "DELETED"}
    assert not emu.job_done and emu.task_views()[0].retrying
    _, response = post(emu, report())  # the agent forgot it: the next attempt goes out
    assert sent(response) == {retry: "ASSIGNED"}
    variables = response["tasks"][0]["spec"]["environment"]["variables"]
    assert variables["BATCH_TASK_RETRY_ATTEMPT"] == "1"
    _, response = post(emu, report(failed(t0, 7), failed(retry, 1)))  # no retries left
    assert sent(response) == {retry: "DELETED"}
    assert emu.job_done and emu.job_failed and emu.job_state == "FAILED"
    assert emu.task_names() == [retry]
    assert emu.task_state(PREFIX + "0") == emu.task_state(t0) == "FAILED"
    assert exit_codes(emu.task_events(PREFIX + "0")) == [1]  # the old attempt's report ignored
    tasks = [
        (c["from"], c["state"], c["attempt"]) for c in emu.changes_since(0) if c["event"] == "task"
    ]
    assert tasks == [
        (None, "PENDING", 0),
        ("PENDING", "ASSIGNED", 0),
        ("ASSIGNED", "RUNNING", 0),
        ("RUNNING", "FAILED", 0),
        ("FAILED", "PENDING", 1),
        ("PENDING", "ASSIGNED", 1),
        ("ASSIGNED", "FAILED", 1),
    ]
    view = emu.task_views()[0]
    assert (view.attempt, view.exit_code, view.phase, view.retrying) == (1, 1, "FAILED", False)


def test_job_states_and_events(make: Any) -> None:
    """QUEUED until an agent reports, then SCHEDULED, RUNNING and SUCCEEDED, Batch-worded."""
    emu = make(job(1))
    assert emu.job_state == "QUEUED"
    post(emu, report(state="AGENT_STARTING"))
    assert emu.job_state == "SCHEDULED"
    post(emu, report(task_info(name(emu, 0), "SUCCEEDED", 1)))
    jobs = [c for c in emu.changes_since(0) if c["event"] == "job"]
    assert [j["state"] for j in jobs] == ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"]
    assert jobs[-1]["description"] == (
        f"Job state is set from RUNNING to SUCCEEDED for job {PARENT}/jobs/job-1."
    )


def test_cancel_job_withdraws_pending_and_cancels_assigned(make: Any) -> None:
    """cancel_job: pending tasks never run (UNEXECUTED), assigned ones get CANCELLED."""
    emu = make(job(2, parallelism=1, taskSpec={**SCRIPT, "maxRetryCount": 3}))
    t0 = name(emu, 0)
    post(emu, report(task_info(t0, "RUNNING", 1)))
    emu.cancel_job()
    assert emu.job_state == "CANCELLATION_IN_PROGRESS"
    _, response = post(emu, report(task_info(t0, "RUNNING", 1)))
    assert sent(response) == {t0: "CANCELLED"}
    _, response = post(emu, report(failed(t0, 143)))  # cancelled: no retry
    assert emu.job_done and emu.job_state == "CANCELLED"
    assert [v.phase for v in emu.task_views()] == ["FAILED", "UNEXECUTED"]


def test_hosts_file_is_written_and_passed(make: Any, tmp_path: Path) -> None:
    """requireHostsFile: the emulator writes one line per VM and passes BATCH_HOSTS_FILE."""
    emu = make(job(2, requireHostsFile=True), vms=2, files_dir=tmp_path)
    assert (tmp_path / "hosts").read_text() == "127.0.0.1\n127.0.0.1\n"
    _, response = post(emu, report())
    variables = response["tasks"][0]["spec"]["environment"]["variables"]
    assert variables["BATCH_HOSTS_FILE"] == str(tmp_path / "hosts")
    assert variables["BATCH_TASK_COUNT"] == "2"


def test_in_order_hands_out_one_task_at_a_time(make: Any) -> None:
    """IN_ORDER: task i+1 is assigned only after task i finished, even with spare VMs."""
    emu = make(job(2, schedulingPolicy="IN_ORDER"), vms=2)
    t0, t1 = name(emu, 0), name(emu, 1)
    assert sent(post(emu, report(), vm=0)[1]) == {t0: "ASSIGNED"}
    assert sent(post(emu, report(), vm=1)[1]) == {}
    _, response = post(emu, report(task_info(t0, "SUCCEEDED", 1)), vm=0)
    assert sent(response) == {t0: "DELETED", t1: "ASSIGNED"}
