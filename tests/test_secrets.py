"""Secret Manager and Cloud KMS variables, end to end: the real agent against the emulator,
values in the runnables' environments, masked in what the agent logs and reports, never on disk."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from batch_agent.control import SecretError, SecretsClient
from batch_agent.emulator.secrets import SecretStore, encrypt
from batch_agent.tasks.masking import Masker, MaskingFilter, mask
from tests.helpers import exit_code, final_event, script, wait_until
from tests.test_container_e2e import remove_image

PROJECT = "projects/123456789012"
DB = f"{PROJECT}/secrets/db/versions/1"
TOKEN = f"{PROJECT}/secrets/token/versions/latest"
KEY = f"{PROJECT}/locations/global/keyRings/ring/cryptoKeys/key"
DB_VALUE = "db-VALUE-hunter2"
TOKEN_VALUE = "token-VALUE-42"
KMS_TASK_VALUE = "kms-task-VALUE-x"
KMS_RUNNABLE_VALUE = "kms-runnable-VALUE-y"
EVERY_VALUE = (DB_VALUE, TOKEN_VALUE, KMS_TASK_VALUE, KMS_RUNNABLE_VALUE)


def kms(**variables: str) -> dict[str, str]:
    return {"keyName": KEY, "cipherText": encrypt(KEY, json.dumps(variables).encode())}


def grep_state(state_dir: Path, value: str, *options: str) -> str:
    """What `grep -r VALUE STATE_DIR` finds (empty when nothing)."""
    found = subprocess.run(
        ["grep", "-r", *options, value, str(state_dir)], capture_output=True, text=True
    )
    assert found.returncode in (0, 1), found.stderr
    return found.stdout


def run_task(make_emulator, start_agent, task: dict[str, Any], **secrets: str):
    emu = make_emulator(
        None, secrets={DB: DB_VALUE, f"{PROJECT}/secrets/token/versions/2": TOKEN_VALUE, **secrets}
    )
    name = emu.add_task(task)
    agent = start_agent(emu, "--once")
    status = agent.wait(90)
    return emu, name, agent, status


def test_secret_and_kms_variables_reach_both_levels(make_emulator, start_agent, tmp_path):
    """Task- and runnable-level secretVariables and encryptedVariables, in spec and
    agentTaskSpec, are in the runnable's environment; the state dir holds none of them."""
    out = tmp_path / "out"
    names = ("DB", "TOKEN", "KMS_TASK", "KMS_RUNNABLE", "PLAIN", "AGENT_PLAIN")
    show = " ".join(f'"${name}"' for name in names)
    runnable = script(
        f"printf '%s\\n' {show} > {out}",
        environment={
            "secretVariables": {"TOKEN": TOKEN},
            "encryptedVariables": kms(KMS_RUNNABLE=KMS_RUNNABLE_VALUE),
        },
    )
    task = {
        "spec": {
            "runnables": [runnable],
            "environment": {"variables": {"PLAIN": "p"}, "secretVariables": {"DB": DB}},
        },
        "agentTaskSpec": {
            "runnables": [runnable],
            "environment": {
                "variables": {"AGENT_PLAIN": "a"},
                "encryptedVariables": kms(KMS_TASK=KMS_TASK_VALUE),
            },
        },
    }
    emu, name, agent, status = run_task(make_emulator, start_agent, task)
    assert status == 0, agent.log()
    assert out.read_text().splitlines() == [
        DB_VALUE,
        TOKEN_VALUE,
        KMS_TASK_VALUE,
        KMS_RUNNABLE_VALUE,
        "p",
        "a",
    ]
    assert emu.task_state(name) == "SUCCEEDED"
    for value in EVERY_VALUE:
        assert grep_state(tmp_path / "state", value) == ""
        assert value not in agent.log()


def test_printed_secret_is_masked_in_log_and_events(make_emulator, start_agent, tmp_path):
    """A value the task prints is `***` in the agent's log and in its custom status event."""
    event = '{"batch/custom/event": "connected with %s"}'
    runnable = script(
        f'echo "password is $DB"; printf \'{event}\\n\' "$DB"',
        environment={"secretVariables": {"DB": DB}},
    )
    emu, name, agent, status = run_task(
        make_emulator, start_agent, {"spec": {"runnables": [runnable]}}
    )
    log = agent.log()
    assert status == 0, log
    assert "password is ***" in log
    assert DB_VALUE not in log
    descriptions = [e["description"] for e in emu.task_events(name)]
    assert "connected with ***" in descriptions, descriptions
    assert not any(DB_VALUE in d for d in descriptions)
    # The events were saved masked; a runnable's own output files (tasks/) are its, not ours.
    assert grep_state(tmp_path / "state", DB_VALUE, "--exclude-dir=tasks") == ""


def test_a_restarted_agent_fetches_the_secrets_again(make_emulator, start_agent, tmp_path):
    """After kill -9 the new agent's prestart asks Secret Manager again (nothing was kept on
    disk) and the next runnable still gets the value."""
    started, go, out = tmp_path / "started", tmp_path / "go", tmp_path / "out"
    wait = f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done"
    task = {
        "spec": {
            "runnables": [script(wait), script(f'echo "$DB" > {out}')],
            "environment": {"secretVariables": {"DB": DB}},
        }
    }
    emu = make_emulator(None, secrets={DB: DB_VALUE})
    name = emu.add_task(task)
    first = start_agent(emu)
    wait_until(started.exists, timeout=60, what="first runnable started")
    first.kill()
    assert emu.secrets.accessed == [DB]
    second = start_agent(emu)
    wait_until(lambda: len(emu.secrets.accessed) == 2, timeout=60, what="secret fetched again")
    go.touch()
    wait_until(lambda: emu.task_state(name) == "SUCCEEDED", timeout=60, what="SUCCEEDED")
    assert out.read_text() == DB_VALUE + "\n"
    assert grep_state(tmp_path / "state", DB_VALUE) == ""
    assert second.terminate() == 0


@pytest.mark.timeout(180)
def test_registry_login_and_container_env_from_secrets(
    make_emulator, start_agent, docker_engine, registry, tmp_path
):
    """A container's username/password given as Secret Manager paths authenticate the pull,
    and its secret variables reach the container's environment."""
    user, password = f"{PROJECT}/secrets/user/versions/1", f"{PROJECT}/secrets/pw/versions/1"
    container = {
        "imageUri": registry.image,
        "entrypoint": "/bin/sh",
        "commands": ["-c", f'test "$DB" = {DB_VALUE}'],
        "username": user,
        "password": password,
    }
    task = {
        "spec": {
            "runnables": [{"container": container}],
            "environment": {"secretVariables": {"DB": DB}},
        }
    }
    remove_image(docker_engine, registry.image)
    emu = make_emulator(
        None, secrets={DB: DB_VALUE, user: registry.username, password: registry.password}
    )
    name = emu.add_task(task)
    agent = start_agent(emu, "--once", DOCKER_HOST=docker_engine)
    status = agent.wait(150)
    assert status == 0, agent.log()
    assert emu.task_state(name) == "SUCCEEDED"
    assert set(emu.secrets.accessed) == {DB, user, password}
    assert grep_state(tmp_path / "state", registry.password) == ""


def test_missing_secret_fails_the_task_before_any_runnable(make_emulator, start_agent, tmp_path):
    """A secret Secret Manager does not have fails the task with 50000, the event naming the
    variable, the path and the API's error; no runnable ran."""
    marker = tmp_path / "ran"
    missing = f"{PROJECT}/secrets/nope/versions/3"
    task = {
        "spec": {
            "runnables": [
                script(f"touch {marker}", environment={"secretVariables": {"X": missing}})
            ],
            "environment": {"secretVariables": {"DB": DB}},
        }
    }
    emu, name, agent, status = run_task(make_emulator, start_agent, task)
    assert status == 1, agent.log()
    assert exit_code(emu, name) == 50000
    description = final_event(emu, name)["description"]
    assert "variable X of runnables[0]" in description
    assert missing in description
    assert "404 NOT_FOUND: Secret [projects/123456789012/secrets/nope] not found" in description
    assert not marker.exists()
    assert DB_VALUE not in agent.log()


def test_bad_ciphertext_fails_the_task_naming_the_key(make_emulator, start_agent, tmp_path):
    """A ciphertext the KMS key cannot decrypt fails the task with 50000 naming the key."""
    marker = tmp_path / "ran"
    other = KEY.rsplit("/", 1)[0] + "/other"
    bad = {"keyName": KEY, "cipherText": encrypt(other, b'{"A": "b"}')}
    task = {
        "spec": {
            "runnables": [script(f"touch {marker}")],
            "environment": {"encryptedVariables": bad},
        }
    }
    emu, name, agent, status = run_task(make_emulator, start_agent, task)
    assert status == 1, agent.log()
    assert exit_code(emu, name) == 50000
    description = final_event(emu, name)["description"]
    assert f"encryptedVariables of the task from {KEY}" in description
    assert "Decryption failed" in description
    assert not marker.exists()


def test_local_runs_a_job_with_secrets_from_a_file(tmp_path):
    """`batch-agent local --secrets FILE` serves the secrets, and a ciphertext made with
    `batch-agent emulator encrypt` decrypts, so the job config runs unchanged."""
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "batch_agent.cli",
            "emulator",
            "encrypt",
            "--key",
            KEY,
            json.dumps({"K": KMS_TASK_VALUE}),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    ciphertext = made.stdout.strip()
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({DB: DB_VALUE}))
    check = f'test "$DB" = {DB_VALUE} && test "$K" = {KMS_TASK_VALUE} && echo "got $DB"'
    config = {
        "taskGroups": [
            {
                "taskSpec": {
                    "runnables": [script(check)],
                    "environment": {
                        "secretVariables": {"DB": DB},
                        "encryptedVariables": {"keyName": KEY, "cipherText": ciphertext},
                    },
                }
            }
        ]
    }
    job = tmp_path / "job.json"
    job.write_text(json.dumps(config))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "batch_agent.cli",
            "local",
            str(job),
            "--json",
            "--secrets",
            str(secrets),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "got ***" in result.stdout
    assert DB_VALUE not in result.stdout


def test_client_retries_transient_failures_and_not_permanent_ones(make_emulator):
    """Over real HTTP: two 503s are retried within the budget; a 403 fails at once, permanent,
    with the API's error; a 404 too."""
    emu = make_emulator(None, secrets={DB: DB_VALUE})
    client = SecretsClient(
        secretmanager_endpoint=emu.url, kms_endpoint=emu.url, metadata_host=emu.metadata_host
    )
    try:
        emu.secrets.fail_next(2, 503)
        assert client.access_secret(DB) == DB_VALUE
        assert emu.secrets.accessed == [DB]  # the two failures were answered before the store
        emu.secrets.fail_next(1, 403)
        with pytest.raises(SecretError) as denied:
            client.access_secret(DB)
        assert denied.value.permanent
        assert str(denied.value) == "403 PERMISSION_DENIED: injected failure"
        with pytest.raises(SecretError) as missing:
            client.decrypt(KEY, encrypt(KEY.rsplit("/", 1)[0] + "/other", b"x"))
        assert missing.value.permanent
        assert "400 INVALID_ARGUMENT: Decryption failed" in str(missing.value)
        assert client.decrypt(KEY, encrypt(KEY, b"plain")) == b"plain"
    finally:
        client.close()


def test_a_hanging_call_is_cut_at_its_deadline_and_retried(make_emulator):
    """Over real HTTP: a Secret Manager call left unanswered ends at the call's deadline and is
    retried on a fresh connection within the budget; one that hangs every time fails when
    the budget runs out, not permanent, naming the deadline."""
    emu = make_emulator(None, secrets={DB: DB_VALUE})
    client = SecretsClient(
        secretmanager_endpoint=emu.url,
        kms_endpoint=emu.url,
        metadata_host=emu.metadata_host,
        deadline=timedelta(seconds=0.5),
        budget=timedelta(seconds=30),
    )
    try:
        emu.secrets.hang_next(1)
        assert client.access_secret(DB) == DB_VALUE
        emu.secrets.hang_next(1000)
        client.budget = timedelta(seconds=2)
        began = time.monotonic()
        with pytest.raises(SecretError) as hung:
            client.access_secret(DB)
        assert time.monotonic() - began < 2 + 5  # the budget, and an attempt's last moments
        assert not hung.value.permanent
        assert str(hung.value).startswith("Secret Manager: no complete answer within the ")
        assert "deadline" in str(hung.value)
    finally:
        client.close()


def test_abort_ends_a_hanging_call_and_every_retry(make_emulator):
    """abort() (the agent stopping) ends a call blocked on a silent server at once, though
    its deadline and budget are far off, and no retry follows."""
    emu = make_emulator(None, secrets={DB: DB_VALUE})
    client = SecretsClient(
        secretmanager_endpoint=emu.url, kms_endpoint=emu.url, metadata_host=emu.metadata_host
    )
    emu.secrets.hang_next(1000)
    failures: list[SecretError] = []

    def fetch() -> None:
        try:
            client.access_secret(DB)
        except SecretError as error:
            failures.append(error)

    caller = threading.Thread(target=fetch)
    caller.start()
    try:
        wait_until(lambda: emu.secrets.hanging == 1, timeout=30, what="the call hanging")
        client.abort()
        caller.join(timeout=10)
        assert not caller.is_alive()
        assert [str(f) for f in failures] == ["abandoned: the agent is stopping"]
    finally:
        emu.secrets.release()
        caller.join()
        client.close()


def test_a_hanging_secret_fails_its_task_alone_at_the_deadline(make_emulator, start_agent):
    """A Secret Manager that never answers fails the task that reads it with 50000 once the
    secret's budget (BATCH_AGENT_SECRET_TIMEOUT) ran out, the event naming the variable and
    the deadline; a task without secrets on the same agent succeeds."""
    emu = make_emulator(None, secrets={DB: DB_VALUE})
    emu.secrets.hang_next(1000)
    reader = emu.add_task(
        {
            "spec": {
                "runnables": [script("true")],
                "environment": {"secretVariables": {"DB": DB}},
            }
        }
    )
    other = emu.add_task({"spec": {"runnables": [script("true")]}})
    agent = start_agent(emu, "--once", BATCH_AGENT_SECRET_TIMEOUT="2")
    status = agent.wait(90)
    assert status == 1, agent.log()
    assert emu.task_state(other) == "SUCCEEDED"
    assert exit_code(emu, reader) == 50000
    description = final_event(emu, reader)["description"]
    assert f"cannot resolve variable DB of the task from {DB}: Secret Manager: no complete" in (
        description
    )
    assert "deadline" in description


def test_sigterm_while_a_secret_hangs_stops_the_agent_at_once(make_emulator, start_agent):
    """An agent told to stop while a task's prestart waits on a silent Secret Manager exits
    0 without waiting out the call, and the task is not failed: the next agent fetches again."""
    emu = make_emulator(None, secrets={DB: DB_VALUE})
    emu.secrets.hang_next(1000)
    task = {"spec": {"runnables": [script("true")], "environment": {"secretVariables": {"DB": DB}}}}
    name = emu.add_task(task)
    agent = start_agent(emu, BATCH_AGENT_SECRET_TIMEOUT="600")
    wait_until(lambda: emu.secrets.hanging == 1, timeout=60, what="the secret call hanging")
    assert agent.terminate(timeout=15) == 0, agent.log()
    assert emu.task_state(name) != "FAILED"
    assert not any(e.get("taskState") == "FAILED" for e in emu.task_events(name)), emu.task_events(
        name
    )


def test_mask_replaces_every_value_longest_first():
    """A value that contains another is masked whole; text without values is unchanged."""
    assert mask("a=secret-long b=secret", ["secret", "secret-long"]) == "a=*** b=***"
    assert mask("nothing here", ["secret"]) == "nothing here"


def test_masker_masks_each_line_of_a_multiline_value_and_skips_tiny_ones():
    """Output is shipped line by line, so each line of a multi-line secret is masked; values
    too short to be secrets (`1`) are not, or every digit would be."""
    masker = Masker()
    masker.add("first-line\nsecond-line")
    masker.add("1")
    assert masker.mask("x second-line 1") == "x *** 1"


def test_log_filter_masks_messages_arguments_and_tracebacks():
    """The agent's log filter masks a value passed as an argument and one in a traceback."""
    masker = Masker()
    masker.add("hunter2")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "value %s", ("hunter2",), None)
    assert MaskingFilter(masker).filter(record)
    assert record.getMessage() == "value ***"
    try:
        raise RuntimeError("boom hunter2")
    except RuntimeError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    MaskingFilter(masker).filter(failed)
    assert "hunter2" not in logging.Formatter().format(failed)
    assert "RuntimeError: boom ***" in failed.getMessage()


def test_emulator_secret_store_validates_like_google():
    """No bearer token -> 401; an unknown secret -> 404; `latest` is the highest version."""
    store = SecretStore(
        {f"{PROJECT}/secrets/s/versions/1": "one", f"{PROJECT}/secrets/s/versions/2": "two"}
    )
    assert store.access(f"{PROJECT}/secrets/s/versions/1", None).status == 401
    assert store.access(f"{PROJECT}/secrets/t/versions/1", "Bearer x").status == 404
    latest = store.access(f"{PROJECT}/secrets/s/versions/latest", "Bearer x")
    assert json.loads(latest.body)["payload"]["data"] == "dHdv"  # base64 of "two"
    with pytest.raises(ValueError):
        SecretStore({"secrets/s": "x"})
