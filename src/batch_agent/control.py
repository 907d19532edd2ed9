"""The Batch API client: one `state:report` call, its credentials, and the classification of
its failures into `ControlPlaneError`.

This is the only module of ours that imports googleapiclient, httplib2, google.auth and
google_auth_httplib2; everything else talks to `ControlPlane`, `ControlPlaneError` and the
wire models. It must not retry: a call either returns a response or raises a classified
error, and the agent loop owns retries (see `Backoff`). It must not read the environment;
the caller passes the metadata host and says whether to use Application Default Credentials.
"""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import google_auth_httplib2
import httplib2
from googleapiclient import discovery, errors
from pydantic import ValidationError

from batch_agent.wire import ReportAgentStateRequest, ReportAgentStateResponse

log = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_METADATA_HOST = "metadata.google.internal"

# Statuses worth trying again later. 408/429/5xx are the server telling us "not now".
# 401/403 are retried too: on a fresh VM the service account's token or its IAM binding
# (roles/batch.agentReporter) can take minutes to propagate, AuthorizedHttp has already
# refreshed the token and resent before we see a 401, and giving up would strand the tasks
# running on this VM; the agent's capped backoff keeps the cost of retrying low.
# Every other 4xx (400 invalid request, 404 unknown parent, ...) means our request or our
# configuration is wrong and sending it again cannot help.
_RETRYABLE_STATUSES = frozenset(
    {
        HTTPStatus.UNAUTHORIZED,  # 401
        HTTPStatus.FORBIDDEN,  # 403
        HTTPStatus.REQUEST_TIMEOUT,  # 408
        HTTPStatus.TOO_MANY_REQUESTS,  # 429
        HTTPStatus.INTERNAL_SERVER_ERROR,  # 500
        HTTPStatus.BAD_GATEWAY,  # 502
        HTTPStatus.SERVICE_UNAVAILABLE,  # 503
        HTTPStatus.GATEWAY_TIMEOUT,  # 504
    }
)


class ControlPlaneError(Exception):
    """A `state:report` call that did not produce a response.

    `retryable` says whether the same call may succeed later; `status` is the HTTP status
    when the server answered with one, else None.
    """

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP error status may go away on its own (see `_RETRYABLE_STATUSES`)."""
    return status in _RETRYABLE_STATUSES


def _classify(error: Exception) -> ControlPlaneError | None:
    """Turn what the client stack raised into a ControlPlaneError; None for our own bugs."""
    if isinstance(error, errors.HttpError):
        status = int(error.resp.status)
        return ControlPlaneError(
            f"Batch API answered {status}: {_error_detail(error)}",
            retryable=is_retryable_status(status),
            status=status,
        )
    if isinstance(error, google.auth.exceptions.DefaultCredentialsError):
        # An unreadable or invalid credentials file is a configuration error; it stays.
        return ControlPlaneError(f"cannot load credentials: {error}", retryable=False)
    if isinstance(
        error, google.auth.exceptions.RefreshError | google.auth.exceptions.TransportError
    ):
        # No token yet: the metadata server or the token endpoint is unreachable, or the
        # service account is not attached yet on a fresh VM. Both can heal.
        return ControlPlaneError(f"cannot get an access token: {error}", retryable=True)
    if isinstance(error, httplib2.RelativeURIError):
        # The endpoint is not an absolute URL: configuration, retrying cannot help.
        return ControlPlaneError(f"bad Batch API endpoint: {error}", retryable=False)
    if isinstance(error, httplib2.HttpLib2Error | OSError):
        # Connection refused/reset, DNS failure (ServerNotFoundError), timeouts (TimeoutError
        # is an OSError), proxy trouble: the network or the server may come back.
        return ControlPlaneError(
            f"cannot reach the Batch API: {type(error).__name__}: {error}", retryable=True
        )
    if isinstance(error, UnicodeDecodeError):
        # A 200 whose body is not even text (googleapiclient decodes it as UTF-8): retryable
        # like any malformed answer, see ControlPlane.report.
        return ControlPlaneError(f"malformed Batch API response: {error}", retryable=True)
    return None  # not a failure of the call: a bug of ours, let it crash loudly


def _error_detail(error: errors.HttpError) -> str:
    """The server's message from a googleapis error body, else the raw reason."""
    try:
        body = json.loads(error.content)
        message = body["error"]["message"]
        if isinstance(message, str):
            return message
    except (ValueError, KeyError, TypeError):
        pass
    reason: str = error.reason or ""
    return reason or repr(error.content[:200])


def _refresh_error(message: str) -> Exception:
    return google.auth.exceptions.RefreshError(message)  # type: ignore[no-untyped-call]


class MetadataServerCredentials(google.auth.credentials.Credentials):
    """Access tokens of the VM's default service account, from the given metadata server.

    google-auth's `compute_engine.Credentials` does the same but reads `GCE_METADATA_HOST`
    once, when `google.auth.compute_engine._metadata` is imported, so its host cannot be
    chosen by the caller (nor by a test that starts a metadata server on a free port).
    Only the token is fetched (no scopes, email or universe lookups): the default universe
    is googleapis.com. `refresh` BLOCKS on one HTTP GET through the transport it is given and
    raises `RefreshError` when the server cannot be reached or gives no usable token.
    """

    def __init__(self, host: str = DEFAULT_METADATA_HOST) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._url = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"

    def refresh(self, request: google.auth.transport.Request) -> None:
        try:
            response = request(url=self._url, method="GET", headers={"Metadata-Flavor": "Google"})
        except (OSError, google.auth.exceptions.TransportError) as error:
            # google_auth_httplib2 wraps httplib2's errors but lets socket errors through.
            message = f"cannot reach the metadata server at {self._url}: {error}"
            raise _refresh_error(message) from error
        if response.status != HTTPStatus.OK:
            raise _refresh_error(f"metadata server answered {response.status} for {self._url}")
        try:
            answer = json.loads(response.data)
            token = answer["access_token"]
            lifetime = timedelta(seconds=float(answer["expires_in"]))
        except (ValueError, KeyError, TypeError) as error:
            raise _refresh_error(
                f"metadata server sent a malformed token from {self._url}: {error!r}"
            ) from None
        if not isinstance(token, str) or not token:
            raise _refresh_error("metadata server sent no access_token")
        self.token = token
        # google-auth compares expiry with a naive UTC "now".
        self.expiry = datetime.now(UTC).replace(tzinfo=None) + lifetime


class ControlPlane:
    """The Batch API `state:report` method, with credentials.

    Credentials, in order: `credentials` if given (any google-auth credentials); else, when
    `application_default` is true (the caller sets it when GOOGLE_APPLICATION_CREDENTIALS is
    set), google-auth's Application Default Credentials, which read that variable themselves;
    else the VM's service account through the metadata server at `metadata_host` (host:port,
    as GCE_METADATA_HOST gives it).

    Constructing does no I/O; the client is built on the first `report` and kept. Not
    thread-safe: one call at a time (sequential calls from different worker threads are fine).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: timedelta = timedelta(seconds=30),
        credentials: object | None = None,
        application_default: bool = False,
        metadata_host: str = DEFAULT_METADATA_HOST,
    ) -> None:
        # googleapiclient joins "v1/..." onto the endpoint: it needs the trailing slash.
        self.endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        self.timeout = timeout
        self._credentials = credentials
        self._application_default = application_default
        self._metadata_host = metadata_host
        self._service: Any = None

    def report(self, parent: str, request: ReportAgentStateRequest) -> ReportAgentStateResponse:
        """POST `{endpoint}v1/{parent}/state:report` and return the parsed response.

        BLOCKS for up to about `timeout` per HTTP exchange (a token refresh, or one resend
        after a 401, may add more); call it from a worker thread (`asyncio.to_thread`), one
        call at a time. Makes one attempt: every failure of the call raises ControlPlaneError,
        whose `retryable` tells the caller what to do. Anything else that escapes is a bug of
        ours (e.g. a `parent` not shaped `projects/*/locations/*`: googleapiclient's TypeError).
        """
        try:
            call = (
                self._client()
                .projects()
                .locations()
                .state()
                .report(parent=parent, body=request.to_wire())
            )
            # num_retries=0: googleapiclient must not retry behind the agent loop's back.
            answer = call.execute(num_retries=0)
        except Exception as error:
            classified = _classify(error)
            if classified is None:
                raise
            raise classified from error
        try:
            # googleapiclient hands back a non-JSON body as a str; validation rejects it too.
            return ReportAgentStateResponse.model_validate(answer)
        except ValidationError as error:
            # A 200 that is not a ReportAgentStateResponse: a broken proxy or a server hiccup.
            # Retrying is safe: the next report carries the full state again.
            log.warning("control plane: malformed response %.200r: %s", answer, error)
            raise ControlPlaneError(
                f"malformed Batch API response: {error}", retryable=True
            ) from error

    def close(self) -> None:
        """Close the HTTP connections; idempotent. A later `report` builds a new client."""
        if self._service is not None:
            self._service.close()
            self._service = None

    def _client(self) -> Any:
        if self._service is None:
            http = google_auth_httplib2.AuthorizedHttp(
                self._resolve_credentials(),
                http=httplib2.Http(timeout=self.timeout.total_seconds()),
            )
            # `http` and `credentials` are mutually exclusive in build(); the credentials
            # travel inside AuthorizedHttp.
            self._service = discovery.build(
                "batch",
                "v1",
                http=http,
                static_discovery=True,
                client_options={"api_endpoint": self.endpoint},
            )
        return self._service

    def _resolve_credentials(self) -> object:
        if self._credentials is not None:
            return self._credentials
        if self._application_default:
            credentials, _project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            return credentials
        return MetadataServerCredentials(self._metadata_host)


class Backoff:
    """Capped exponential backoff with full jitter (pure; the caller sleeps).

    The n-th delay (from 0) is uniform in [0, ceiling_n] where ceiling_n =
    min(maximum, initial * multiplier**n); full jitter spreads VMs that failed together.
    """

    def __init__(
        self,
        initial: timedelta = timedelta(seconds=1),
        maximum: timedelta = timedelta(seconds=60),
        multiplier: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= timedelta(0) or maximum < initial or multiplier < 1.0:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum and multiplier >= 1, got "
                f"initial={initial}, maximum={maximum}, multiplier={multiplier}"
            )
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self._rng = rng if rng is not None else random.Random()
        self._ceiling = initial

    @property
    def ceiling(self) -> timedelta:
        """The upper bound of the next delay; never decreases until `reset`."""
        return self._ceiling

    def next_delay(self) -> timedelta:
        """A delay in [0, ceiling], then grow the ceiling towards `maximum`."""
        ceiling = self._ceiling
        delay = ceiling * self._rng.random()
        # Grow in float seconds and clamp, so the ceiling never overflows or exceeds maximum.
        grown = ceiling.total_seconds() * self.multiplier
        self._ceiling = min(self.maximum, timedelta(seconds=min(grown, 1e9)))
        return delay

    def reset(self) -> None:
        """Back to `initial`, after a success."""
        self._ceiling = self.initial
