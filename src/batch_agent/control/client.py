"""The Batch API client: `ControlPlane`, one `state:report` call with its credentials and its
deadline, every failure raised as a classified `ControlPlaneError`.

This module builds the googleapiclient service and sends the request; what failures mean lives
in `errors`, the metadata-server token in `credentials`, the watchdog in `deadline`. It must not
retry: a call either returns a response or raises, and the agent loop owns retries (see
`Backoff`). It must not read the environment: the caller passes the metadata host and says
whether to use Application Default Credentials (httplib2 reads the proxy variables itself).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import google_auth_httplib2
import httplib2
from googleapiclient import discovery

from batch_agent.control.credentials import authorized_http
from batch_agent.control.deadline import deadline_watchdog
from batch_agent.control.errors import ControlPlaneError, classify, status_error
from batch_agent.vm import DEFAULT_METADATA_HOST
from batch_agent.wire import (
    MalformedResponse,
    ReportAgentStateRequest,
    ReportAgentStateResponse,
    parse_response,
)

log = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_DEADLINE = timedelta(seconds=60)  # one whole call: token, request, every byte of answer


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
        self._abort = threading.Event()  # set by abort(), cleared by each call
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
            classified = classify(error)
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
        self._abort.clear()
        with deadline_watchdog(deadline, self._https, self._abort) as expired:
            try:
                response, content = self._authorized.request(
                    call.uri, method=call.method, body=call.body, headers=headers
                )
            except Exception as error:
                if not expired.is_set():
                    raise
                if self._abort.is_set():
                    raise ControlPlaneError(
                        "abandoned: the agent is stopping", retryable=True
                    ) from error
                raise ControlPlaneError(
                    f"no complete answer within the {deadline.total_seconds():g}s "
                    f"deadline ({type(error).__name__})",
                    retryable=True,
                ) from error
        if int(response.status) >= HTTPStatus.MULTIPLE_CHOICES:
            raise status_error(response, content)
        try:
            return parse_response(content)
        except MalformedResponse as error:
            # A 2xx that is not a ReportAgentStateResponse: a broken proxy or a server hiccup.
            # Retrying is safe: the next report carries the full state again.
            log.warning("control plane: malformed response %.200r: %s", content, error)
            raise ControlPlaneError(
                f"malformed Batch API response: {error}", retryable=True
            ) from error

    def abort(self) -> None:
        """Make the call in progress, if any, give up at once (it raises ControlPlaneError).
        Thread-safe: for a loop told to stop while a report hangs."""
        self._abort.set()

    def close(self) -> None:
        """Close the HTTP connections; idempotent. A later `report` builds a new client."""
        if self._service is not None:
            self._service.close()
        for pool in self._https:
            pool.close()
        self._service, self._authorized, self._https = None, None, []

    def _client(self) -> Any:
        if self._service is None:
            self._authorized, self._https = authorized_http(
                self._credentials,
                application_default=self._application_default,
                metadata_host=self._metadata_host,
                timeout=self.timeout,
                scope=CLOUD_PLATFORM_SCOPE,
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
