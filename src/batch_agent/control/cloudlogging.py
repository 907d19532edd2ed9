"""The Cloud Logging client: `CloudLogging`, one `entries.write` call with the same credentials,
HTTP stack, deadline and error classes as the Batch API client.

It must not retry (the log writer owns retries, with `Backoff`), batch or build entries: it
sends the `WriteLogEntriesRequest` it is given. It must not read the environment.
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

from batch_agent.control.client import CLOUD_PLATFORM_SCOPE
from batch_agent.control.credentials import authorized_http
from batch_agent.control.deadline import deadline_watchdog
from batch_agent.control.errors import ControlPlaneError, classify, status_error
from batch_agent.vm import DEFAULT_METADATA_HOST

log = logging.getLogger(__name__)

DEFAULT_LOGGING_ENDPOINT = "https://logging.googleapis.com/"
WRITE_DEADLINE = timedelta(seconds=60)  # one whole call: token, request, every byte of answer


class CloudLogging:
    """Cloud Logging's `entries.write`. Credentials and proxies as `ControlPlane`'s. Not
    thread-safe: one call at a time (sequential calls from different worker threads are
    fine); `abort` may be called from any thread."""

    def __init__(
        self,
        endpoint: str = DEFAULT_LOGGING_ENDPOINT,
        *,
        timeout: timedelta = timedelta(seconds=30),
        deadline: timedelta = WRITE_DEADLINE,
        credentials: object | None = None,
        application_default: bool = False,
        metadata_host: str = DEFAULT_METADATA_HOST,
    ) -> None:
        # googleapiclient joins "v2/..." onto the endpoint: it needs the trailing slash.
        self.endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        self.timeout = timeout
        self.deadline = deadline
        self._credentials = credentials
        self._application_default = application_default
        self._metadata_host = metadata_host
        self._service: Any = None
        self._authorized: google_auth_httplib2.AuthorizedHttp | None = None
        self._https: list[httplib2.Http] = []
        self._abort = threading.Event()

    def write(self, request: dict[str, Any]) -> None:
        """POST `{endpoint}v2/entries:write` with this `WriteLogEntriesRequest` (JSON value).

        BLOCKS for at most about the deadline (call it from a worker thread). One attempt.
        Raises ControlPlaneError and nothing else; `status` 403 is a denial (API disabled or
        no `logging.logEntries.create`), `retryable` as for the Batch API."""
        try:
            self._write(request)
        except ControlPlaneError:
            raise
        except Exception as error:
            classified = classify(error)
            if classified is None:
                log.exception("cloud logging: unexpected failure of a write")
                classified = ControlPlaneError(
                    f"unexpected failure: {type(error).__name__}: {error}", retryable=True
                )
            raise classified from error

    def abort(self) -> None:
        """Make the call in progress, if any, give up at once. Thread-safe."""
        self._abort.set()

    def close(self) -> None:
        """Close the HTTP connections; idempotent. A later `write` builds a new client."""
        if self._service is not None:
            self._service.close()
        for pool in self._https:
            pool.close()
        self._service, self._authorized, self._https = None, None, []

    def _write(self, request: dict[str, Any]) -> None:
        call = self._client().entries().write(body=request)
        headers = dict(call.headers)
        headers.setdefault("content-length", str(call.body_size))
        assert self._authorized is not None
        self._abort.clear()
        with deadline_watchdog(self.deadline, self._https, self._abort) as expired:
            try:
                response, content = self._authorized.request(
                    call.uri, method=call.method, body=call.body, headers=headers
                )
            except Exception as error:
                if not expired.is_set():
                    raise
                raise ControlPlaneError(
                    f"Cloud Logging: no complete answer within the deadline"
                    f" ({type(error).__name__})",
                    retryable=True,
                ) from error
        if int(response.status) >= HTTPStatus.MULTIPLE_CHOICES:
            raise status_error(response, content, api="Cloud Logging")

    def _client(self) -> Any:
        if self._service is None:
            self._authorized, self._https = authorized_http(
                self._credentials,
                application_default=self._application_default,
                metadata_host=self._metadata_host,
                timeout=self.timeout,
                scope=CLOUD_PLATFORM_SCOPE,
            )
            self._service = discovery.build(
                "logging",
                "v2",
                http=self._authorized,
                static_discovery=True,
                client_options={"api_endpoint": self.endpoint},
            )
        return self._service
