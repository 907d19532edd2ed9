"""Settings: where each value comes from (flags > environment > file > defaults) and how a bad
one is refused, naming where it came from."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batch_agent.config import DEFAULT_ENDPOINT, ConfigError, load_config


def config_file(tmp_path: Path, **values: object) -> Path:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(values))
    return path


def test_defaults_with_an_empty_environment():
    config = load_config(environ={})
    assert config.endpoint == DEFAULT_ENDPOINT
    assert config.state_dir == Path("/var/lib/batch-agent")
    assert config.kill_grace == timedelta(seconds=10)
    assert config.credentials_file is None
    assert config.log_format == "text"  # auto, and stderr is not the journal
    assert config.environ == {}


def test_flags_beat_environment_beat_file(tmp_path):
    file = config_file(tmp_path, gcsfuse="from-file", kill_grace=1, device_dir="/file")
    env = {"BATCH_AGENT_GCSFUSE": "from-env", "BATCH_AGENT_KILL_GRACE": "2s"}
    config = load_config(file, environ=env, gcsfuse="from-flag")
    assert config.gcsfuse == "from-flag"
    assert config.kill_grace == timedelta(seconds=2)
    assert config.device_dir == Path("/file")
    assert load_config(file, environ=env).gcsfuse == "from-env"
    assert load_config(file, environ={}).gcsfuse == "from-file"


def test_settings_read_from_other_tools_variables():
    env = {
        "GCE_METADATA_HOST": "127.0.0.1:8080",
        "GOOGLE_APPLICATION_CREDENTIALS": "/keys/sa.json",
        "DOCKER_HOST": "unix:///run/docker.sock",
        "BATCH_AGENT_METADATA_HOST": "ignored",
    }
    config = load_config(environ=env)
    assert config.metadata_host == "127.0.0.1:8080"
    assert config.credentials_file == Path("/keys/sa.json")
    assert config.docker_host == "unix:///run/docker.sock"
    assert config.environ == env  # what runnables inherit a clean part of


def test_values_are_read_by_type(tmp_path):
    file = config_file(
        tmp_path,
        min_report_interval=0.25,
        script_startup_time="2026-12-02T10:00:00.5Z",
        volume_root=None,
        metrics_port=9100,
    )
    env = {"BATCH_AGENT_REQUEST_TIMEOUT": "7", "BATCH_AGENT_DOCKER_HOST": "x", "DOCKER_HOST": ""}
    config = load_config(file, environ=env, endpoint="http://127.0.0.1:1")
    assert config.min_report_interval == timedelta(seconds=0.25)
    assert config.request_timeout == timedelta(seconds=7)
    assert config.script_startup_time == datetime(2026, 12, 2, 10, 0, 0, 500000, tzinfo=UTC)
    assert config.volume_root is None
    assert config.docker_host is None  # an empty variable is unset
    assert config.metrics_port == 9100
    assert config.endpoint == "http://127.0.0.1:1/"  # googleapiclient joins "v1/..." onto it


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"BATCH_AGENT_METRICS_PORT": "abc"}, "BATCH_AGENT_METRICS_PORT: 'abc' is not an integer"),
        ({"BATCH_AGENT_METRICS_PORT": "70000"}, "metrics_port: 70000 is not a port"),
        ({"BATCH_AGENT_KILL_GRACE": "-1"}, "BATCH_AGENT_KILL_GRACE: '-1' is not a duration of 0"),
        ({"BATCH_AGENT_KILL_GRACE": "nan"}, "BATCH_AGENT_KILL_GRACE: 'nan' is not a duration"),
        ({"BATCH_AGENT_KILL_GRACE": "10 minutes"}, "is not a duration such as"),
        ({"BATCH_AGENT_SCRIPT_STARTUP_TIME": "2026-12-02T10:00:00"}, "has no time zone"),
        ({"BATCH_AGENT_SCRIPT_STARTUP_TIME": "yesterday"}, "is not an RFC 3339 time"),
        ({"BATCH_AGENT_LOG_FORMAT": "xml"}, "log_format: 'xml' is not one of"),
        ({"BATCH_AGENT_REPORTED_VERSION": " "}, "reported_version: must not be empty"),
        ({"BATCH_AGENT_STATE_DIR": ""}, "BATCH_AGENT_STATE_DIR: an empty path"),
    ],
)
def test_bad_environment_values_are_refused(env, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(environ=env)


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting 'kill_grase'"):
        load_config(config_file(tmp_path, kill_grase=1), environ={})
    with pytest.raises(ConfigError, match="state_dir: 3 is not a string"):
        load_config(config_file(tmp_path, state_dir=3), environ={})
    with pytest.raises(ConfigError, match="metrics_port: True is not an integer"):
        load_config(config_file(tmp_path, metrics_port=True), environ={})
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_config(tmp_path / "list.json", environ={})
    with pytest.raises(ConfigError, match=r"missing\.json"):
        load_config(tmp_path / "missing.json", environ={})


def test_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("BATCH_AGENT_GCSFUSE", "/opt/gcsfuse")
    config = load_config()
    assert config.gcsfuse == "/opt/gcsfuse"
    assert config.environ["BATCH_AGENT_GCSFUSE"] == "/opt/gcsfuse"
