"""What a failed `state:report` call means: `ControlPlaneError`, and the classification of
whatever the client stack raised, of HTTP statuses and of Retry-After into it.

Classification happens here, once: each status and each exception family says in a comment why
it is or is not retryable. This module only judges; it sends nothing, retries nothing and
does not log (the caller decides what an unexpected failure deserves).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import re
from datetime import UTC, datetime, timedelta
from http import HTTPStatus

import google.auth.exceptions
import httplib2

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


def classify(error: Exception, api: str = "Batch API") -> ControlPlaneError | None:
    """Turn what the client stack raised into a ControlPlaneError (`api` names the API the
    call was for); None if unexpected."""
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
        return ControlPlaneError(f"bad {api} endpoint: {error}", retryable=False)
    if isinstance(error, httplib2.HttpLib2Error | OSError | http.client.HTTPException):
        # Transport: connection refused/reset, DNS failure (ServerNotFoundError), timeouts
        # (TimeoutError is an OSError), TLS and proxy failures (socks.ProxyError is an
        # OSError), and garbage in place of HTTP (http.client's IncompleteRead for a body
        # shorter than its Content-Length, BadStatusLine, LineTooLong). The network or the
        # server may come back.
        return ControlPlaneError(
            f"cannot reach {api}: {type(error).__name__}: {error}", retryable=True
        )
    return None


def status_error(
    response: httplib2.Response, content: bytes, api: str = "Batch API"
) -> ControlPlaneError:
    """The error for an answer with a status >= 300: its message, verdict and Retry-After."""
    status = int(response.status)
    return ControlPlaneError(
        f"{api} answered {status}: {error_detail(response, content)}",
        retryable=is_retryable_status(status),
        status=status,
        retry_after=parse_retry_after(response.get("retry-after"), datetime.now(UTC)),
    )


def error_detail(response: httplib2.Response, content: bytes, *, status_name: bool = False) -> str:
    """The server's message from a googleapis error body (after its status name, e.g.
    `NOT_FOUND: ...`, when asked for), else the raw reason; cut short."""
    try:
        error = json.loads(content)["error"]
        message, name = error["message"], error.get("status") if status_name else None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        message, name = None, None
    if not isinstance(message, str):
        message = str(response.reason or "") or repr(content[:200])
    elif isinstance(name, str) and name:
        message = f"{name}: {message}"
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
