"""Container runnables through the real agent: the emulator, a real Docker engine, a registry."""

from __future__ import annotations

from typing import Any

import pytest

from tests import docker_support
from tests.docker_support import BUSYBOX_IMAGE
from tests.helpers import (
    exit_code,
    final_event,
    job,
    script,
    wait_until,
    wait_until_shipped_and_saved,
)

pytestmark = pytest.mark.timeout(180)

TASK0 = "projects/123456789012/locations/us-central1/jobs/job-1/taskGroups/group0/tasks/0"


def container(command: str, **fields: Any) -> dict[str, Any]:
    """A busybox container runnable running `command` with sh."""
    extra = {k: fields.pop(k) for k in list(fields) if k not in ("timeout", "background")}
    return {
        "container": {
            "imageUri": BUSYBOX_IMAGE,
            "entrypoint": "/bin/sh",
            "commands": ["-c", command],
            **extra,
        },
        **fields,
    }


def containers_of_task(host: str) -> list[Any]:
    client = docker_support.client(host)
    try:
        # Any task's: the agent sees TASK0 under another name (`task/JOB_UID-group0-0/0/0`).
        return client.containers.list(all=True, filters={"label": "batch-agent.task"})
    finally:
        client.close()


def test_mixed_script_and_container_task(make_emulator, start_agent, docker_engine, tmp_path):
    """Scripts and containers run in order in one task; variables reach the container, the
    agent's own environment does not, and the first failing exit code is the task's."""
    out = tmp_path / "out"
    config = job(
        script(f"echo script >> {out}"),
        container('echo "container $WHO $BATCH_TASK_INDEX ${AGENT_ONLY:-none}"; exit 4'),
        script(f"echo skipped >> {out}"),
        environment={"variables": {"WHO": "task"}},
    )
    emu = make_emulator(config)
    agent = start_agent(emu, "--once", DOCKER_HOST=docker_engine, AGENT_ONLY="leak")
    assert agent.wait(90) == 1, agent.log()
    assert out.read_text() == "script\n"
    assert exit_code(emu, TASK0) == 4
    assert "[task 0 r2 stdout] container task 0 none" in agent.log()
    assert containers_of_task(docker_engine) == []  # removed once it ended


def test_missing_image_fails_with_50000_and_the_registry_reason(
    make_emulator, start_agent, docker_engine
):
    """An image that does not exist fails the task with 50000 and says why."""
    config = job({"container": {"imageUri": "local/does-not-exist:1", "commands": ["true"]}})
    emu = make_emulator(config)
    agent = start_agent(emu, "--once", DOCKER_HOST=docker_engine)
    assert agent.wait(90) == 1, agent.log()
    event = final_event(emu, TASK0)
    assert event["taskExecution"]["exitCode"] == 50000
    assert "local/does-not-exist:1" in event["description"]


def test_engine_down_fails_the_task_and_the_agent_carries_on(make_emulator, start_agent, tmp_path):
    """No Docker engine: the container task fails with 50000 saying so; a script task is fine."""
    config = job(container("true"), task_count=1)
    emu = make_emulator(config)
    script_task = emu.add_task({"spec": {"runnables": [script(f"touch {tmp_path / 'ok'}")]}})
    dead = f"unix://{tmp_path / 'no-docker.sock'}"
    agent = start_agent(emu, "--once", DOCKER_HOST=dead)
    assert agent.wait(90) == 1, agent.log()
    event = final_event(emu, TASK0)
    assert event["taskExecution"]["exitCode"] == 50000
    assert "unreachable" in event["description"].lower()
    assert emu.task_state(script_task) == "SUCCEEDED"


def test_private_registry_good_and_bad_credentials(
    make_emulator, start_agent, docker_engine, registry
):
    """username/password authenticate the pull; refused credentials fail with 50000."""

    def run(password: str) -> Any:
        spec = {
            "imageUri": registry.image,
            "commands": ["true"],
            "username": registry.username,
            "password": password,
        }
        emu = make_emulator(job({"container": spec}))
        agent = start_agent(emu, "--once", DOCKER_HOST=docker_engine, state=password)
        agent.wait(90)
        return final_event(emu, TASK0)

    remove_image(docker_engine, registry.image)
    assert run(registry.password)["taskState"] == "SUCCEEDED"
    remove_image(docker_engine, registry.image)
    refused = run("wrong-password")
    assert refused["taskExecution"]["exitCode"] == 50000
    assert registry.image in refused["description"]


@pytest.mark.parametrize(
    "limits",
    [{"runnable": {"timeout": "2s"}}, {"task": {"maxRunDuration": "2s"}}],
    ids=["timeout", "maxRunDuration"],
)
def test_limits_stop_a_container_that_ignores_sigterm(
    make_emulator, start_agent, docker_engine, limits
):
    """A container over its timeout or the task's maxRunDuration is stopped through the API
    (SIGKILL after the grace): 50005, and no container is left."""
    runnable = container("trap '' TERM; while :; do sleep 1; done", **limits.get("runnable", {}))
    config = job(runnable, **limits.get("task", {}))
    emu = make_emulator(config)
    agent = start_agent(emu, "--once", DOCKER_HOST=docker_engine)
    assert agent.wait(90) == 1, agent.log()
    assert exit_code(emu, TASK0) == 50005
    assert containers_of_task(docker_engine) == []


def test_cancel_and_background_containers(make_emulator, start_agent, docker_engine, tmp_path):
    """CANCELLED stops the foreground and background containers of the task."""
    config = job(container("exec sleep 300", background=True), container("exec sleep 300"))
    emu = make_emulator(config)
    agent = start_agent(emu, DOCKER_HOST=docker_engine)
    wait_until(lambda: len(containers_of_task(docker_engine)) == 2, timeout=60, what="2 running")
    emu.cancel_task(TASK0)
    wait_until(lambda: emu.task_state(TASK0) == "FAILED", timeout=60, what="FAILED")
    assert "cancelled" in final_event(emu, TASK0)["description"]
    wait_until(lambda: containers_of_task(docker_engine) == [], what="containers removed")
    assert agent.terminate() == 0


def test_background_container_stopped_after_foreground(make_emulator, start_agent, docker_engine):
    """A background container still running when the foreground ends is stopped, not failed."""
    config = job(container("exec sleep 300", background=True), script("sleep 1"))
    emu = make_emulator(config)
    agent = start_agent(emu, "--once", DOCKER_HOST=docker_engine)
    assert agent.wait(90) == 0, agent.log()
    assert containers_of_task(docker_engine) == []


def test_kill_9_while_a_container_runs(make_emulator, start_agent, docker_engine, tmp_path):
    """The restarted agent finds the running container by its labels: no second container,
    and the task gets the container's own exit code."""
    go = tmp_path / "go"
    config = job(
        container(
            f"echo started; while [ ! -e {go} ]; do sleep 0.1; done; exit 7",
            volumes=[f"{tmp_path}:{tmp_path}"],
        )
    )
    emu = make_emulator(config)
    first = start_agent(emu, DOCKER_HOST=docker_engine)
    wait_until(lambda: "[task 0 r1 stdout] started" in first.log(), timeout=60, what="running")
    wait_until_shipped_and_saved(tmp_path / "state", len("started\n"))
    first.kill()
    (before,) = containers_of_task(docker_engine)
    second = start_agent(emu, DOCKER_HOST=docker_engine)
    wait_until(lambda: "reattaching" in second.log(), what="reattached")
    go.touch()
    wait_until(lambda: emu.task_state(TASK0) == "FAILED", timeout=60, what="FAILED")
    assert exit_code(emu, TASK0) == 7
    assert second.log().count("[task 0 r1 stdout] started") == 1  # shipped once, not twice
    assert second.terminate() == 0
    assert before.id not in [c.id for c in containers_of_task(docker_engine)]


def test_task_volumes_are_mounted_when_the_container_names_none(
    make_emulator, start_agent, docker_engine, tmp_path
):
    """spec.volumes' mountPaths are mounted at the same path in containers without volumes."""
    shared = tmp_path / "shared"
    shared.mkdir()
    config = job(
        container(f"echo hi > {shared}/from-container"),
        volumes=[{"mountPath": str(shared)}],
    )
    emu = make_emulator(config)
    agent = start_agent(emu, "--once", DOCKER_HOST=docker_engine)
    assert agent.wait(90) == 0, agent.log()
    assert (shared / "from-container").read_text() == "hi\n"


def test_user_account_runs_the_container_as_uid_gid(
    make_emulator, start_agent, docker_engine, batch_user
):
    """userAccount becomes --user uid:gid."""
    uid, gid = batch_user.pw_uid, batch_user.pw_gid
    emu = make_emulator(None)
    name = emu.add_task(
        {
            "agentTaskSpec": {
                "runnables": [container(f'test "$(id -u):$(id -g)" = "{uid}:{gid}"')],
                "userAccount": {"uid": str(uid), "gid": str(gid)},
            },
        }
    )
    agent = start_agent(emu, "--once", DOCKER_HOST=docker_engine)
    assert agent.wait(90) == 0, agent.log()
    assert emu.task_state(name) == "SUCCEEDED"


def test_containers_of_a_task_deleted_while_the_agent_was_down_are_removed(
    make_emulator, start_agent, docker_engine
):
    """A task deleted while the agent was down: the restarted agent removes its container."""
    emu = make_emulator(job(container("echo up; exec sleep 300")))
    first = start_agent(emu, DOCKER_HOST=docker_engine)
    wait_until(lambda: "[task 0 r1 stdout] up" in first.log(), timeout=60, what="running")
    first.kill()
    assert len(containers_of_task(docker_engine)) == 1
    emu.delete_task(TASK0)
    second = start_agent(emu, DOCKER_HOST=docker_engine)
    wait_until(lambda: containers_of_task(docker_engine) == [], timeout=60, what="removed")
    assert second.terminate() == 0


def remove_image(host: str, image: str) -> None:
    client = docker_support.client(host)
    try:
        client.images.remove(image)
    except Exception as error:  # not there: nothing to remove
        if "No such image" not in str(error):
            raise
    finally:
        client.close()
