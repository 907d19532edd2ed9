"""The environment of a runnable: clean base, layers, Batch variables last."""

from __future__ import annotations

from batch_agent.tasks.env import DEFAULT_PATH, base_environment, runnable_environment


def test_base_keeps_only_the_sane_keys() -> None:
    """The agent's own variables (credentials, config) do not leak into the base."""
    agent_env = {
        "PATH": "/opt/bin:/usr/bin",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "BATCH_AGENT_ENDPOINT": "http://127.0.0.1:1/",
        "GOOGLE_APPLICATION_CREDENTIALS": "/secret.json",
        "HOME": "/root",
        "INVOCATION_ID": "abc",
    }
    assert base_environment(agent_env) == {
        "PATH": "/opt/bin:/usr/bin",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
    }


def test_base_path_defaults_when_missing_or_empty() -> None:
    """Without a PATH the runnable still gets the usual one."""
    assert base_environment({}) == {"PATH": DEFAULT_PATH}
    assert base_environment({"PATH": ""}) == {"PATH": DEFAULT_PATH}


def test_later_layers_win_and_batch_variables_win_over_all() -> None:
    """base -> task -> runnable -> batch; users cannot override BATCH_TASK_INDEX."""
    env = runnable_environment(
        {"PATH": "/bin", "LANG": "C", "A": "base"},
        {"A": "task", "B": "task", "BATCH_TASK_INDEX": "99"},
        {"B": "runnable", "C": "runnable"},
        {"BATCH_TASK_INDEX": "3", "BATCH_TASK_RETRY_ATTEMPT": "0"},
    )
    assert env == {
        "PATH": "/bin",
        "LANG": "C",
        "A": "task",
        "B": "runnable",
        "C": "runnable",
        "BATCH_TASK_INDEX": "3",
        "BATCH_TASK_RETRY_ATTEMPT": "0",
        "HOME": "/root",
    }


def test_home_defaults_but_a_user_value_wins() -> None:
    """HOME is the caller's default unless a layer sets it."""
    assert runnable_environment({}, {}, {}, {}, home="/home/u")["HOME"] == "/home/u"
    assert runnable_environment({}, {"HOME": "/data"}, {}, {}, home="/home/u")["HOME"] == "/data"


def test_inputs_are_not_modified() -> None:
    """The merge is pure: the caller's mappings are left alone."""
    base = {"PATH": "/bin"}
    runnable_environment(base, {"X": "1"}, {}, {"BATCH_TASK_INDEX": "0"})
    assert base == {"PATH": "/bin"}
