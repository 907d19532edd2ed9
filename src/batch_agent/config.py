"""Agent settings: the only reader of os.environ and of the config file.

Precedence: command-line flags > environment (`BATCH_AGENT_*`) > config file (JSON) > defaults.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from batch_agent import REPORTED_VERSION
from batch_agent.journal import is_journal_stream
from batch_agent.vm import DEFAULT_METADATA_HOST

DEFAULT_ENDPOINT = "https://batch.googleapis.com/"
# API roots for tasks' secretVariables and encryptedVariables (control/secrets.py).
DEFAULT_SECRETMANAGER_ENDPOINT = "https://secretmanager.googleapis.com/"
DEFAULT_KMS_ENDPOINT = "https://cloudkms.googleapis.com/"
DEFAULT_LOGGING_ENDPOINT = "https://logging.googleapis.com/"  # control/cloudlogging.py
CLOUD_LOGGING_MODES = ("auto", "always", "never")
LOG_FORMATS = ("auto", "text", "json", "journal")


def _seconds(value: object) -> object:
    """Durations in env and files: `2`, `2.5` (seconds) or `"2.5s"`."""
    if isinstance(value, str):
        text = value.strip().removesuffix("s")
        try:
            return timedelta(seconds=float(text))
        except ValueError:
            return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


Seconds = Annotated[timedelta, BeforeValidator(_seconds)]


class ConfigError(Exception):
    """The configuration is unusable; the CLI exits 2."""


class Config(BaseSettings):
    """Everything the agent needs to know before it starts."""

    model_config = SettingsConfigDict(
        env_prefix="BATCH_AGENT_", extra="forbid", populate_by_name=True
    )

    endpoint: str = DEFAULT_ENDPOINT
    secretmanager_endpoint: str = DEFAULT_SECRETMANAGER_ENDPOINT
    kms_endpoint: str = DEFAULT_KMS_ENDPOINT
    logging_endpoint: str = DEFAULT_LOGGING_ENDPOINT
    # Which tasks' output goes to Cloud Logging: auto (those whose agentTaskSpec has a
    # loggingOption), always, never (docs/choices.md). The agent's own log follows auto/always.
    cloud_logging: str = "auto"
    state_dir: Path = Path("/var/lib/batch-agent")
    # host:port of the GCE metadata server; google-auth reads the same variable.
    metadata_host: str = Field(
        default=DEFAULT_METADATA_HOST,
        validation_alias=AliasChoices("metadata_host", "GCE_METADATA_HOST"),
    )
    # A service-account key file (Application Default Credentials); else the VM's account.
    credentials_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("credentials_file", "GOOGLE_APPLICATION_CREDENTIALS"),
    )
    # The Docker engine for container runnables (as the docker CLI reads it).
    docker_host: str | None = Field(
        default=None, validation_alias=AliasChoices("docker_host", "DOCKER_HOST")
    )
    # text, json, journal (no timestamps, `<N>` priorities), or auto: journal when stderr is
    # the journal (systemd's `JOURNAL_STREAM`), else text.
    log_format: str = "auto"
    # Prometheus metrics and /healthz on 127.0.0.1:PORT; 0 (the default) is off.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # The agent version reported to the server (`metadata.version`), not ours: README.
    reported_version: str = REPORTED_VERSION
    # Used until the server says otherwise (our choice: docs/choices.md).
    default_report_interval: Seconds = timedelta(seconds=10)
    min_report_interval: Seconds = timedelta(seconds=1)
    # How long to keep trying an unreachable control plane in `run --once` before exit 3.
    unreachable_timeout: Seconds = timedelta(seconds=60)
    # SIGTERM -> SIGKILL grace when the agent stops a runnable.
    kill_grace: Seconds = timedelta(seconds=10)
    request_timeout: Seconds = timedelta(seconds=30)
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
    environ: dict[str, str] = Field(default_factory=dict, exclude=True)


def load_config(file: Path | None = None, **overrides: Any) -> Config:
    """Build the Config; raises ConfigError with a readable reason."""
    values: dict[str, Any] = {}
    if file is not None:
        try:
            values = json.loads(file.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"{file}: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{file}: expected a JSON object")
    values.update({key: value for key, value in overrides.items() if value is not None})
    values.setdefault("environ", dict(os.environ))
    try:
        config = Config(**values)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(
            f"log_format: {config.log_format!r} is not one of {', '.join(LOG_FORMATS)}"
        )
    if config.log_format == "auto":
        journal = is_journal_stream(config.environ)
        config = config.model_copy(update={"log_format": "journal" if journal else "text"})
    if config.cloud_logging not in CLOUD_LOGGING_MODES:
        modes = ", ".join(CLOUD_LOGGING_MODES)
        raise ConfigError(f"cloud_logging: {config.cloud_logging!r} is not one of {modes}")
    if not config.reported_version.strip():
        raise ConfigError("reported_version: must not be empty")
    if not config.endpoint.endswith("/"):
        config = config.model_copy(update={"endpoint": config.endpoint + "/"})
    return config
