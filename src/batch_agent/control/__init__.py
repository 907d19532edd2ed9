"""The Batch API control plane as the agent sees it: `ControlPlane` (one `state:report` call),
`ControlPlaneError` (every failure, classified) and `Backoff` (the loop's retry delays).

This package is the only importer of googleapiclient, httplib2, google.auth and
google_auth_httplib2 in the project; everything else talks to the names below and the wire
models. Its modules: `googleapi` (what every API client shares: HTTP stack, discovery
client, whole-call deadline, abort), `client` (ControlPlane), `errors` (what a failure means,
Retry-After), `credentials` (tokens from a metadata server), `deadline` (the per-call
watchdog), `backoff`, `deferred` (two modules of the client libraries loaded only if used),
`secrets` (Secret Manager and Cloud KMS for tasks' variables: the one client that retries,
within a stated budget), `cloudlogging` (Cloud Logging's `entries.write`). Nothing here reads
the environment.
"""

from batch_agent.control.deferred import defer_unused_imports

defer_unused_imports()  # before httplib2 and googleapiclient are imported (see `deferred`)

# ruff: isort: split
from batch_agent.control.backoff import Backoff  # noqa: E402
from batch_agent.control.client import (  # noqa: E402
    CLOUD_PLATFORM_SCOPE,
    DEFAULT_DEADLINE,
    ControlPlane,
)
from batch_agent.control.cloudlogging import (  # noqa: E402
    DEFAULT_LOGGING_ENDPOINT,
    CloudLogging,
)
from batch_agent.control.credentials import MetadataServerCredentials  # noqa: E402
from batch_agent.control.errors import (  # noqa: E402
    MAX_RETRY_AFTER,
    ControlPlaneError,
    is_retryable_status,
    parse_retry_after,
)
from batch_agent.control.secrets import (  # noqa: E402
    DEFAULT_KMS_ENDPOINT,
    DEFAULT_SECRETMANAGER_ENDPOINT,
    SecretError,
    SecretsClient,
)

__all__ = [
    "CLOUD_PLATFORM_SCOPE",
    "DEFAULT_DEADLINE",
    "DEFAULT_KMS_ENDPOINT",
    "DEFAULT_LOGGING_ENDPOINT",
    "DEFAULT_SECRETMANAGER_ENDPOINT",
    "MAX_RETRY_AFTER",
    "Backoff",
    "CloudLogging",
    "ControlPlane",
    "ControlPlaneError",
    "MetadataServerCredentials",
    "SecretError",
    "SecretsClient",
    "is_retryable_status",
    "parse_retry_after",
]
