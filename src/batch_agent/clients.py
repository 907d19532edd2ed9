"""The Google API clients the agent holds, built from its config: the Batch API, Secret Manager
and Cloud KMS, Cloud Logging. One place says how each reaches its API (credentials, socket
timeout), so that the first report (firstreport.py, built before the rest of the agent is
imported) and the report loop build theirs alike. Nothing here calls anything.
"""

from __future__ import annotations

from typing import Any

from batch_agent.config import Config
from batch_agent.control import CloudLogging, ControlPlane, SecretsClient
from batch_agent.vm import TOKEN_KEY, EarlyAnswers


def _google_access(config: Config) -> dict[str, Any]:
    """How every Google API client reaches its API: the same credentials and socket timeout."""
    return {
        "timeout": config.request_timeout,
        "application_default": config.credentials_file is not None,
        "metadata_host": config.metadata_host,
    }


def control_plane(config: Config, early: EarlyAnswers | None = None) -> ControlPlane:
    """The Batch API client (no call made yet); its first token from `early` if asked there."""
    return ControlPlane(
        config.endpoint,
        early_token=early.first(TOKEN_KEY) if early is not None else None,
        **_google_access(config),
    )


def secrets_client(config: Config) -> SecretsClient:
    """The Secret Manager and KMS client (no call made yet)."""
    return SecretsClient(
        secretmanager_endpoint=config.secretmanager_endpoint,
        kms_endpoint=config.kms_endpoint,
        budget=config.secret_timeout,
        **_google_access(config),
    )


def logging_client(config: Config) -> CloudLogging:
    """The Cloud Logging client (no call made yet)."""
    return CloudLogging(
        config.logging_endpoint,
        **_google_access(config),
    )
