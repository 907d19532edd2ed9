"""Agent settings: the only reader of os.environ and of the config file.

Precedence: command-line flags > environment > config file (JSON) > defaults. A setting's
environment variable is `BATCH_AGENT_<NAME>` (`BATCH_AGENT_KILL_GRACE`) unless `ENV_NAMES` says
otherwise; in the file it is the field's name (`"kill_grace": "2.5s"`). Plain code rather than
a settings library: `batch-agent version` and the agent's start-up read it, and
pydantic-settings alone cost 40-100 ms of imports at each start (`python -X importtime`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from batch_agent import REPORTED_VERSION

DEFAULT_ENDPOINT = "https://batch.googleapis.com/"
# API roots for tasks' secretVariables and encryptedVariables (control/secrets.py).
DEFAULT_SECRETMANAGER_ENDPOINT = "https://secretmanager.googleapis.com/"
DEFAULT_KMS_ENDPOINT = "https://cloudkms.googleapis.com/"
DEFAULT_METADATA_HOST = "metadata.google.internal"  # host[:port], as GCE_METADATA_HOST says
DEFAULT_LOGGING_ENDPOINT = "https://logging.googleapis.com/"  # control/cloudlogging.py
DEFAULT_STATE_DIR = "/var/lib/batch-agent"
RUNTIME_DIR = "/run/batch-agent"  # systemd's RuntimeDirectory=batch-agent
CLOUD_LOGGING_MODES = ("auto", "always", "tasks", "never")
LOG_FORMATS = ("auto", "text", "json", "journal")
ENV_PREFIX = "BATCH_AGENT_"
# Settings read from the variables other tools read too, not from BATCH_AGENT_<NAME>.
ENV_NAMES = {
    "metadata_host": "GCE_METADATA_HOST",  # google-auth reads the same variable
    "credentials_file": "GOOGLE_APPLICATION_CREDENTIALS",
    "docker_host": "DOCKER_HOST",  # as the docker CLI reads it
}


class ConfigError(Exception):
    """The configuration is unusable; the CLI exits 2."""


class Config(NamedTuple):
    """Everything the agent needs to know before it starts. Each field's type says how a
    value is read (`_READERS`); `load_config` builds it. A named tuple, not a frozen
    dataclass: the dataclass's generated methods cost ~5 ms of every agent's start-up."""

    endpoint: str = DEFAULT_ENDPOINT
    secretmanager_endpoint: str = DEFAULT_SECRETMANAGER_ENDPOINT
    kms_endpoint: str = DEFAULT_KMS_ENDPOINT
    logging_endpoint: str = DEFAULT_LOGGING_ENDPOINT
    # Which tasks' output goes to Cloud Logging: auto (those whose agentTaskSpec has a
    # loggingOption), always, never (docs/choices.md). The agent's own log follows auto/always.
    cloud_logging: str = "auto"
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    # Tasks' exit statuses (and scripts), when it is on tmpfs (runtimedir.py). Unset: RUNTIME_DIR
    # with the default state dir (one agent per VM), else none (all in the state dir).
    runtime_dir: Path | None = None
    # host:port of the GCE metadata server.
    metadata_host: str = DEFAULT_METADATA_HOST
    # A service-account key file (Application Default Credentials); else the VM's account.
    credentials_file: Path | None = None
    # The Docker engine for container runnables.
    docker_host: str | None = None
    # text, json, journal (no timestamps, `<N>` priorities), or auto: journal when stderr is
    # the journal (systemd's `JOURNAL_STREAM`), else text.
    log_format: str = "auto"
    # Prometheus metrics and /healthz on 127.0.0.1:PORT; 0 (the default) is off.
    metrics_port: int = 0
    # The agent version reported to the server (`metadata.version`), not ours: README.
    reported_version: str = REPORTED_VERSION
    # Used until the server says otherwise (our choice: docs/choices.md).
    default_report_interval: timedelta = timedelta(seconds=10)
    min_report_interval: timedelta = timedelta(seconds=1)
    # How long to keep trying an unreachable control plane in `run --once` before exit 3.
    unreachable_timeout: timedelta = timedelta(seconds=60)
    # SIGTERM -> SIGKILL grace when the agent stops a runnable.
    kill_grace: timedelta = timedelta(seconds=10)
    request_timeout: timedelta = timedelta(seconds=30)
    # How long one task's secret may take to resolve, retries included (control/secrets.py).
    secret_timeout: timedelta = timedelta(seconds=60)
    # Set by the VM startup script: when it started (RFC 3339).
    script_startup_time: datetime | None = None
    # Where /proc/stat is read for bootTime (tests point it elsewhere to simulate a reboot).
    proc_stat: Path = Path("/proc/stat")
    os_release: Path = Path("/etc/os-release")
    # Task volumes: the gcsfuse binary, where attached disks' `google-<deviceName>` links are,
    # and (`batch-agent local --volume-root`) the folder standing in for buckets and shares.
    gcsfuse: str = "gcsfuse"
    device_dir: Path = Path("/dev/disk/by-id")
    volume_root: Path | None = None
    # The agent's own environment, read once here: runnables inherit a clean part of it.
    environ: Mapping[str, str] = MappingProxyType({})

    def __repr__(self) -> str:
        """Every setting but `environ` (the agent's whole environment: noise, perhaps secrets)."""
        settings = ", ".join(f"{name}={value!r}" for name, value in zip(_NAMES, self, strict=False))
        return f"Config({settings})"


def load_config(file: Path | None = None, **overrides: Any) -> Config:
    """Build the Config from `file`, the environment and `overrides` (the flags; None is
    "not given"); raises ConfigError with a readable reason, naming where the value came from."""
    environ = dict(overrides.pop("environ") if "environ" in overrides else os.environ)
    given: dict[str, tuple[str, object]] = {}  # field -> (where it came from, raw value)
    if file is not None:
        for name, value in _read_file(file).items():
            given[name] = (f"{file}: {name}", value)
    for name in _FIELDS:
        variable = ENV_NAMES.get(name, ENV_PREFIX + name.upper())
        if variable in environ:
            given[name] = (variable, environ[variable])
    for name, value in overrides.items():
        if name not in _FIELDS:
            raise TypeError(f"load_config: no setting {name!r}")
        if value is not None:
            given[name] = (name, value)
    values: dict[str, Any] = {"environ": environ}
    for name, (where, raw) in given.items():
        values[name] = _read(name, raw, where)
    return _checked(Config(**values))


def _read_file(file: Path) -> dict[str, object]:
    import json  # here: `batch-agent version` reads no file

    try:
        values = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{file}: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{file}: unknown setting {', '.join(map(repr, unknown))}")
    return values


def _checked(config: Config) -> Config:
    """The checks across values, and the values derived: `auto` resolved, the slash added."""
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(
            f"log_format: {config.log_format!r} is not one of {', '.join(LOG_FORMATS)}"
        )
    if config.log_format == "auto":
        from batch_agent.journal import is_journal_stream  # here: it loads the logging module

        journal = is_journal_stream(config.environ)
        config = config._replace(log_format="journal" if journal else "text")
    if config.cloud_logging not in CLOUD_LOGGING_MODES:
        modes = ", ".join(CLOUD_LOGGING_MODES)
        raise ConfigError(f"cloud_logging: {config.cloud_logging!r} is not one of {modes}")
    if not config.reported_version.strip():
        raise ConfigError("reported_version: must not be empty")
    if not 0 <= config.metrics_port <= 65535:
        raise ConfigError(f"metrics_port: {config.metrics_port} is not a port (0 is off)")
    if config.runtime_dir is None and config.state_dir == Path(DEFAULT_STATE_DIR):
        # Not for another state dir: agents of other state dirs (tests, `local`) would share it.
        config = config._replace(runtime_dir=Path(RUNTIME_DIR))
    if not config.endpoint.endswith("/"):
        config = config._replace(endpoint=config.endpoint + "/")
    return config


# --- reading one value: from the environment a string, from the file any JSON value ----------


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a string")
    return value


def _path(value: object) -> Path:
    if isinstance(value, Path):
        return value
    text = _text(value)
    if not text:
        raise ValueError("an empty path")
    return Path(text)


def _integer(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise ValueError(f"{_show(value)} is not an integer")


def _seconds(value: object) -> timedelta:
    """Durations: `2`, `2.5` (seconds) or `"2.5s"`; never negative."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 32:
        try:
            seconds = float(value.strip().removesuffix("s"))
        except ValueError:
            raise ValueError(f'{_show(value)} is not a duration such as "2.5s"') from None
    else:
        raise ValueError(f'{_show(value)} is not a duration such as "2.5s"')
    if not math.isfinite(seconds) or not 0 <= seconds <= 10**9:
        raise ValueError(f"{_show(value)} is not a duration of 0 or more seconds")
    return timedelta(seconds=seconds)


def _time(value: object) -> datetime:
    """An RFC 3339 time with its zone (`2026-12-02T10:00:00.123Z`)."""
    if isinstance(value, datetime):
        found = value
    else:
        try:
            found = datetime.fromisoformat(_text(value))
        except ValueError:
            raise ValueError(f"{_show(value)} is not an RFC 3339 time") from None
    if found.tzinfo is None:
        raise ValueError(f"{_show(value)} has no time zone (Z or +HH:MM)")
    return found


def _optional(read: Callable[[object], object]) -> Callable[[object], object]:
    """None (JSON null) or an empty string is "unset"."""
    return lambda value: None if value is None or value == "" else read(value)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# How a value is read, by the field's type as written in `Config`.
_READERS: dict[str, Callable[[object], object]] = {
    "str": _text,
    "str | None": _optional(_text),
    "Path": _path,
    "Path | None": _optional(_path),
    "int": _integer,
    "timedelta": _seconds,
    "datetime | None": _optional(_time),
}
# Each setting's reader; a field of a type without one fails here, at import. (The named tuple
# keeps each annotation, a string here, as a typing.ForwardRef.)
_FIELDS = {
    name: _READERS[str(getattr(kind, "__forward_arg__", kind))]
    for name, kind in Config.__annotations__.items()
    if name != "environ"
}
_NAMES = tuple(_FIELDS)  # Config's fields in order, but `environ` (its last)


def _read(name: str, value: object, where: str) -> object:
    try:
        return _FIELDS[name](value)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
