"""Access tokens of the VM's default service account, from a metadata server the caller names.

A google-auth `Credentials` subclass, so that `AuthorizedHttp` refreshes and attaches it like
any other. It must not read the environment (the caller passes the host, as GCE_METADATA_HOST
gives it) and must not go through a proxy (the metadata server answers only on the VM itself:
the caller hands it a proxy-less `httplib2.Http`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus

import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import google_auth_httplib2
import httplib2

from batch_agent.vm import DEFAULT_METADATA_HOST, TOKEN_KEY


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

    def __init__(
        self,
        host: str = DEFAULT_METADATA_HOST,
        http: httplib2.Http | None = None,
        early: Callable[[], str | None] | None = None,
    ):
        super().__init__()  # type: ignore[no-untyped-call]
        self._url = f"http://{host}/computeMetadata/v1/{TOKEN_KEY}"
        self._http = http
        # The same server's answer, asked before the agent's imports (vm.EarlyAnswers): the
        # first refresh takes it if it holds a token, else asks as every later one does.
        self._early = early

    def refresh(self, request: google.auth.transport.Request) -> None:
        early, self._early = self._early, None
        answer = early() if early is not None else None
        if answer is not None:
            with contextlib.suppress(google.auth.exceptions.RefreshError):
                # Its lifetime is counted from now, not from its arrival a moment ago: a
                # fraction of a second, well inside google-auth's early refresh.
                self._accept(answer.encode())
                return
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
        self._accept(response.data)

    def _accept(self, data: bytes) -> None:
        """Take the token of a 200 answer's body; raises RefreshError when it has none."""
        try:
            answer = json.loads(data)
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


def authorized_http(
    given: object | None,
    *,
    application_default: bool,
    metadata_host: str,
    timeout: timedelta,
    scope: str,
    early_token: Callable[[], str | None] | None = None,
) -> tuple[google_auth_httplib2.AuthorizedHttp, list[httplib2.Http]]:
    """An HTTP client that authorises every call, and its connection pools (for a caller that
    must be able to shut their sockets). Credentials: those `given`, else Application Default
    Credentials when asked for, else the VM's service account from the metadata server (its
    first token from `early_token` when that gives one). API calls use the environment's
    proxies (httplib2's default); the metadata server never does."""
    seconds = timeout.total_seconds()
    api = httplib2.Http(timeout=seconds)
    metadata = httplib2.Http(timeout=seconds, proxy_info=None)
    credentials: object = given
    if credentials is None and application_default:
        credentials, _project = google.auth.default(scopes=[scope])
    if credentials is None:
        credentials = MetadataServerCredentials(metadata_host, http=metadata, early=early_token)
    return google_auth_httplib2.AuthorizedHttp(credentials, http=api), [api, metadata]
