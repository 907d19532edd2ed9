"""The Batch API client: one `state:report` call, its credentials, its deadline, and the
classification of its failures into `ControlPlaneError`.

This is the only module of ours that imports googleapiclient, httplib2, google.auth and
google_auth_httplib2; everything else talks to `ControlPlane`, `ControlPlaneError` and the
wire models. It must not retry: a call either returns a response or raises a classified
error, and the agent loop owns retries (see `Backoff`). It must not read the environment;
the caller passes the metadata host and says whether to use Application Default Credentials
(httplib2 reads the proxy variables itself, see `ControlPlane`).
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import logging
import random
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import google_auth_httplib2
import httplib2
from googleapiclient import discovery

from batch_agent.wire import (
    MalformedResponse,
    ReportAgentStateRequest,
    ReportAgentStateResponse,
    parse_response,
)

log = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_METADATA_HOST = "metadata.google.internal"
DEFAULT_DEADLINE = timedelta(seconds=60)  # one whole call: token, request, every byte of answer
MAX_RETRY_AFTER = timedelta(hours=1)  # a server asking for more is capped: tasks keep running

# 4xx statuses that may heal on their own, although 4xx usually means "your request is wrong":
_RETRYABLE_CLIENT_ERRORS = frozenset(
    {
        # 401/403: on a fresh VM the service account's token or its IAM binding
        # (roles/batch.agentReporter) can take minutes to propagate; AuthorizedHttp has
        # already refreshed the token and resent before we see a 401, and giving up would
        # strand the tasks running on this VM. The loop's capped backoff keeps retries cheap.
        HTTPStatus.UNAUTHORIZED,
        HTTPStatus.FORBIDDEN,
        HTTPStatus.REQUEST_TIMEOUT,  # 408: the server gave up waiting for us; "not now"
        HTTPStatus.TOO_MANY_REQUESTS,  # 429: throttled; Retry-After says for how long
    }
)


def is_retryable_status(status: int) -> bool:
    """Whether the same call may succeed later after the server answered `status` (>= 300)."""
    if 400 <= status < 500:
        # Every other 4xx (400 invalid request, 404 unknown parent, 409, ...) means our
        # request or our configuration is wrong: sending it again cannot help.
        return status in _RETRYABLE_CLIENT_ERRORS
    # 5xx: the server (or a load balancer in front of it) failed or is overloaded; 501 too,
    # which only a misbehaving proxy sends for a POST Google's servers implement.
    # 3xx and nonsense statuses: a captive portal or broken proxy in the path, not a verdict
    # of the Batch API on our request; the next attempt may take a healthy path.
    return True


class ControlPlaneError(Exception):
    """A `state:report` call that did not produce a response.

    `retryable` says whether the same call may succeed later; `status` is the HTTP status
    when the server answered with one, else None; `retry_after` is how long the server asked
    us to wait (its Retry-After header, at most MAX_RETRY_AFTER), None when it did not say.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: timedelta | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


def _classify(error: Exception) -> ControlPlaneError | None:
    """Turn what the client stack raised into a ControlPlaneError; None if unexpected."""
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
    if isinstance(error, httplib2.HttpLib2Error | OSError | http.client.HTTPException):
        # Transport: connection refused/reset, DNS failure (ServerNotFoundError), timeouts
        # (TimeoutError is an OSError), TLS and proxy failures (socks.ProxyError is an
        # OSError), and garbage in place of HTTP (http.client's IncompleteRead for a body
        # shorter than its Content-Length, BadStatusLine, LineTooLong). The network or the
        # server may come back.
        return ControlPlaneError(
            f"cannot reach the Batch API: {type(error).__name__}: {error}", retryable=True
        )
    return None


def _status_error(response: httplib2.Response, content: bytes) -> ControlPlaneError:
    status = int(response.status)
    return ControlPlaneError(
        f"Batch API answered {status}: {_error_detail(response, content)}",
        retryable=is_retryable_status(status),
        status=status,
        retry_after=parse_retry_after(response.get("retry-after"), datetime.now(UTC)),
    )


def _error_detail(response: httplib2.Response, content: bytes) -> str:
    """The server's message from a googleapis error body, else the raw reason; cut short."""
    try:
        message = json.loads(content)["error"]["message"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        message = None
    if not isinstance(message, str):
        message = str(response.reason or "") or repr(content[:200])
    return message if len(message) <= 500 else message[:500] + "..."


_SECONDS = re.compile(r"[0-9]+")


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """A Retry-After header (delay-seconds or HTTP-date) as a delay from `now` (aware), in
    [0, MAX_RETRY_AFTER]; None when absent or garbled. Never raises; cost bounded."""
    if value is None or len(value) > 64:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        delay = timedelta(seconds=min(int(value), MAX_RETRY_AFTER.total_seconds()))
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
            # RFC 9110: an HTTP-date is always GMT; a date without a zone is taken as such.
            delay = (when if when.tzinfo else when.replace(tzinfo=UTC)) - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(delay, timedelta(0)), MAX_RETRY_AFTER)


def _refresh_error(message: str) -> Exception:
    return google.auth.exceptions.RefreshError(message)  # type: ignore[no-untyped-call]


class MetadataServerCredentials(google.auth.credentials.Credentials):
    """Access tokens of the VM's default service account, from the given metadata server.

    google-auth's `compute_engine.Credentials` does the same but reads `GCE_METADATA_HOST`
    once, when `google.auth.compute_engine._metadata` is imported, so its host cannot be
    chosen by the caller (nor by a test that starts a metadata server on a free port).
    Only the token is fetched (no scopes, email or universe lookups): the default universe
    is googleapis.com. `refresh` BLOCKS on one HTTP GET, through `http` when given (else the
    transport it is handed), and raises `RefreshError` when the server cannot be reached or
    gives no usable token.
    """

    def __init__(self, host: str = DEFAULT_METADATA_HOST, http: httplib2.Http | None = None):
        super().__init__()  # type: ignore[no-untyped-call]
        self._url = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
        self._http = http

    def refresh(self, request: google.auth.transport.Request) -> None:
        if self._http is not None:
            request = google_auth_httplib2.Request(self._http)
        try:
            response = request(url=self._url, method="GET", headers={"Metadata-Flavor": "Google"})
        except (OSError, http.client.HTTPException, google.auth.exceptions.TransportError) as e:
            # google_auth_httplib2 wraps httplib2's errors but lets socket errors through.
            message = f"cannot reach the metadata server at {self._url}: {e}"
            raise _refresh_error(message) from e
        if response.status != HTTPStatus.OK:
            raise _refresh_error(f"metadata server answered {response.status} for {self._url}")
        try:
            answer = json.loads(response.data)
            token = answer["access_token"]
            lifetime = timedelta(seconds=min(float(answer["expires_in"]), 86400.0))
        except (ValueError, KeyError, TypeError, IndexError, RecursionError) as error:
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

    Proxies: the Batch API (and the OAuth token endpoint of Application Default Credentials)
    is reached through `https_proxy`/`http_proxy` unless `no_proxy` names its host, as
    httplib2 (with PySocks) does for every google-api-python-client user. The metadata server
    never goes through a proxy: it answers only on the VM itself.

    `timeout` bounds each socket operation; `deadline` bounds a whole `report`, however the
    server trickles its answer. Constructing does no I/O; the client is built on the first
    `report` and kept. Not thread-safe: one call at a time (sequential calls from different
    worker threads are fine).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: timedelta = timedelta(seconds=30),
        deadline: timedelta = DEFAULT_DEADLINE,
        credentials: object | None = None,
        application_default: bool = False,
        metadata_host: str = DEFAULT_METADATA_HOST,
    ) -> None:
        if deadline <= timedelta(0):
            raise ValueError(f"a report deadline must be positive, got {deadline}")
        # googleapiclient joins "v1/..." onto the endpoint: it needs the trailing slash.
        self.endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        self.timeout = timeout
        self.deadline = deadline
        self._credentials = credentials
        self._application_default = application_default
        self._metadata_host = metadata_host
        self._service: Any = None
        self._authorized: google_auth_httplib2.AuthorizedHttp | None = None
        self._https: list[httplib2.Http] = []  # every connection pool a call may use

    def report(
        self,
        parent: str,
        request: ReportAgentStateRequest,
        *,
        deadline: timedelta | None = None,
    ) -> ReportAgentStateResponse:
        """POST `{endpoint}v1/{parent}/state:report` and return the parsed response.

        BLOCKS for at most about `deadline`, plus a connection attempt under way at that
        moment (itself bounded by `timeout`) and name resolution; `deadline` defaults to the
        constructor's (a last report at shutdown may want a shorter one: no caller can cancel
        a worker thread). Call it from a worker thread (`asyncio.to_thread`), one call at a
        time. Makes one attempt (a token refresh and one resend after a 401 are part of it).
        Raises ControlPlaneError and nothing else: every failure, expected or not, is
        classified, and `retryable` tells the caller what to do.
        """
        try:
            return self._report(parent, request, deadline or self.deadline)
        except ControlPlaneError:
            raise
        except Exception as error:
            classified = _classify(error)
            if classified is None:
                # A bug of ours or of a library (e.g. a `parent` googleapiclient rejects):
                # loud in the log, yet the agent keeps reporting and its tasks keep running.
                log.exception("control plane: unexpected failure of a report")
                classified = ControlPlaneError(
                    f"unexpected failure: {type(error).__name__}: {error}", retryable=True
                )
            raise classified from error

    def _report(
        self, parent: str, request: ReportAgentStateRequest, deadline: timedelta
    ) -> ReportAgentStateResponse:
        call = (
            self._client()
            .projects()
            .locations()
            .state()
            .report(parent=parent, body=request.to_wire())
        )
        # googleapiclient builds the request (URL, headers, JSON body); we send it ourselves
        # rather than with `call.execute()`, whose HttpError parses an error body with no
        # guard against deep nesting, so that status, headers and body are all judged here.
        headers = dict(call.headers)
        headers.setdefault("content-length", str(call.body_size))
        assert self._authorized is not None
        with self._deadline(deadline) as expired:
            try:
                response, content = self._authorized.request(
                    call.uri, method=call.method, body=call.body, headers=headers
                )
            except Exception as error:
                if not expired.is_set():
                    raise
                raise ControlPlaneError(
                    f"no complete answer within the {deadline.total_seconds():g}s "
                    f"deadline ({type(error).__name__})",
                    retryable=True,
                ) from error
        if int(response.status) >= HTTPStatus.MULTIPLE_CHOICES:
            raise _status_error(response, content)
        try:
            return parse_response(content)
        except MalformedResponse as error:
            # A 2xx that is not a ReportAgentStateResponse: a broken proxy or a server hiccup.
            # Retrying is safe: the next report carries the full state again.
            log.warning("control plane: malformed response %.200r: %s", content, error)
            raise ControlPlaneError(
                f"malformed Batch API response: {error}", retryable=True
            ) from error

    @contextlib.contextmanager
    def _deadline(self, deadline: timedelta) -> Iterator[threading.Event]:
        """While inside, a watchdog thread waits for `deadline`; once it has passed it sets
        the yielded event and shuts down every socket of every pool (again every 0.1 s, for
        those httplib2 reconnects) until the block exits, so a blocked read returns at once.
        The pools are then closed: the next call starts on fresh connections."""
        done, expired = threading.Event(), threading.Event()

        def watch() -> None:
            if done.wait(deadline.total_seconds()):
                return
            expired.set()
            while True:
                for pool in self._https:
                    _shut_down_sockets(pool)
                if done.wait(0.1):
                    return

        watchdog = threading.Thread(target=watch, name="control-plane-deadline", daemon=True)
        watchdog.start()
        try:
            yield expired
        finally:
            done.set()
            watchdog.join()
            if expired.is_set():
                for pool in self._https:
                    pool.close()

    def close(self) -> None:
        """Close the HTTP connections; idempotent. A later `report` builds a new client."""
        if self._service is not None:
            self._service.close()
        for pool in self._https:
            pool.close()
        self._service, self._authorized, self._https = None, None, []

    def _client(self) -> Any:
        if self._service is None:
            seconds = self.timeout.total_seconds()
            # Proxies from the environment, as httplib2 reads them (the default proxy_info).
            api = httplib2.Http(timeout=seconds)
            metadata = httplib2.Http(timeout=seconds, proxy_info=None)
            self._https = [api, metadata]
            self._authorized = google_auth_httplib2.AuthorizedHttp(
                self._resolve_credentials(metadata), http=api
            )
            # `http` and `credentials` are mutually exclusive in build(); the credentials
            # travel inside AuthorizedHttp.
            self._service = discovery.build(
                "batch",
                "v1",
                http=self._authorized,
                static_discovery=True,
                client_options={"api_endpoint": self.endpoint},
            )
        return self._service

    def _resolve_credentials(self, metadata: httplib2.Http) -> object:
        if self._credentials is not None:
            return self._credentials
        if self._application_default:
            credentials, _project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            return credentials
        return MetadataServerCredentials(self._metadata_host, http=metadata)


def _shut_down_sockets(pool: httplib2.Http) -> None:
    """Wake any read or write blocked on a socket of `pool` (called from another thread).

    `socket.socket.shutdown` on the file descriptor, bypassing SSLSocket's override, which
    would tear down TLS state under the reading thread; the reader sees EOF or an error.
    """
    for connection in list(pool.connections.values()):
        sock = getattr(connection, "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


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
