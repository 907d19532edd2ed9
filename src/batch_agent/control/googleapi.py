"""`GoogleApi`: what the agent's clients of one Google API share, so that each says only its
method: one authorised HTTP stack (credentials, proxies: `credentials.authorized_http`), the
discovery client built on first use from the document google-api-python-client ships, one call
at a time under a whole-call deadline that `abort` can cut short, and every failure raised as a
classified `ControlPlaneError`.

googleapiclient only builds a request (URL, headers, JSON body); `_send` sends it, so that the
status, headers and body of every answer are judged here (`call.execute()`'s HttpError parses
an error body with no guard against deep nesting). No retries here: callers own them
(`Backoff`). Must not read the environment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from http import HTTPStatus
from typing import Any, ClassVar, TypeVar

import google_auth_httplib2
import httplib2
from googleapiclient import discovery

from batch_agent.control.credentials import authorized_http
from batch_agent.control.deadline import deadline_watchdog
from batch_agent.control.errors import ControlPlaneError, classify, status_error
from batch_agent.discovery import document, only_methods
from batch_agent.vm import DEFAULT_METADATA_HOST

log = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_DEADLINE = timedelta(seconds=60)  # one whole call: token, request, every byte of answer
T = TypeVar("T")


class GoogleApi:
    """One Google API through its discovery client. Constructing does no I/O. Not thread-safe:
    one call at a time (sequential calls from different worker threads are fine); `abort` may
    be called from any thread. Subclasses name the API (`API`, `VERSION`, `TITLE`) and the
    methods they call (`METHODS`: the client has only those)."""

    API: ClassVar[str]  # the discovery document's name, e.g. "batch"
    VERSION: ClassVar[str]  # e.g. "v1"
    TITLE: ClassVar[str]  # how errors name it, e.g. "Batch API"
    METHODS: ClassVar[tuple[str, ...]]  # those called, e.g. "projects.locations.state.report"

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: timedelta = timedelta(seconds=30),
        deadline: timedelta = DEFAULT_DEADLINE,
        credentials: object | None = None,
        application_default: bool = False,
        metadata_host: str = DEFAULT_METADATA_HOST,
        early_token: Callable[[], str | None] | None = None,
    ) -> None:
        if deadline <= timedelta(0):
            raise ValueError(f"a call deadline must be positive, got {deadline}")
        # googleapiclient joins "v1/..." onto the endpoint: it needs the trailing slash.
        self.endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        self.timeout = timeout
        self.deadline = deadline
        self._credentials = credentials
        self._application_default = application_default
        self._metadata_host = metadata_host
        self._early_token = early_token  # see credentials.MetadataServerCredentials
        self._service: Any = None
        self._resources: dict[tuple[str, ...], Any] = {}  # see _resource
        self._calls: dict[tuple[str, ...], Any] = {}  # see _call
        self._authorized: google_auth_httplib2.AuthorizedHttp | None = None
        self._abort = threading.Event()  # set by abort(), cleared by each call
        self._https: list[httplib2.Http] = []  # every connection pool a call may use

    def abort(self) -> None:
        """Make the call in progress, if any, give up at once (it raises ControlPlaneError).
        Thread-safe: for a loop told to stop while a call hangs."""
        self._abort.set()

    def close(self) -> None:
        """Close the HTTP connections; idempotent. A later call builds a new client."""
        if self._service is not None:
            self._service.close()
        for pool in self._https:
            pool.close()
        self._service, self._authorized, self._https = None, None, []
        self._resources, self._calls = {}, {}

    def _classified(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, any failure raised as a ControlPlaneError: expected ones classified, a bug
        of ours or of a library loud in the log yet retryable (the agent keeps going)."""
        try:
            return call()
        except ControlPlaneError:
            raise
        except Exception as error:
            classified = classify(error, api=self.TITLE)
            if classified is None:
                log.exception("%s: unexpected failure of %s", self.TITLE, what)
                classified = ControlPlaneError(
                    f"unexpected failure: {type(error).__name__}: {error}", retryable=True
                )
            raise classified from error

    def _client(self) -> Any:
        """The discovery client (and the HTTP stack under it), built on first use and kept."""
        if self._service is None:
            self._authorized, self._https = authorized_http(
                self._credentials,
                application_default=self._application_default,
                metadata_host=self._metadata_host,
                timeout=self.timeout,
                scope=CLOUD_PLATFORM_SCOPE,
                early_token=self._early_token,
            )
            self._early_token = None  # a client built again later gets a fresh token
            # The document google-api-python-client ships, with only the methods we call.
            methods = only_methods(document(f"{self.API}.{self.VERSION}"), self.METHODS)
            # `http` and `credentials` are mutually exclusive; the credentials travel inside
            # AuthorizedHttp.
            self._service = discovery.build_from_document(
                methods, http=self._authorized, client_options={"api_endpoint": self.endpoint}
            )
        return self._service

    def _resource(self, *path: str) -> Any:
        """The discovery client's resource at `path` (`"projects", "locations", "state"`),
        built once and kept: each step of the walk makes a resource object and a method for
        every method of its collection, their docstrings included (~0.5 ms a report)."""
        resource = self._resources.get(path)
        if resource is None:
            resource = self._client()
            for name in path:
                resource = getattr(resource, name)()
            self._resources[path] = resource
        return resource

    def _call(self, path: tuple[str, ...], method: str, **params: str) -> Any:
        """The request googleapiclient builds for `method` of the resource at `path` with
        `params` and an empty body, built once and kept: its URI, method and headers serve
        every call with those params, each sending its own body through `_send` (building it
        anew cost ~0.2 ms a report: the method's parameter checks, its URI template)."""
        key = (*path, method, *(f"{k}={v}" for k, v in sorted(params.items())))
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = getattr(self._resource(*path), method)(**params, body={})
        return call

    def _send(self, call: Any, deadline: timedelta, body: bytes | None = None) -> bytes:
        """Send the request googleapiclient built (`call`; `body` instead of its own, already
        encoded) within `deadline`; return the body of a 2xx answer, raise for the rest."""
        headers = dict(call.headers)
        if body is None:
            body = call.body
            headers.setdefault("content-length", str(call.body_size))
        else:
            headers["content-length"] = str(len(body))
        assert self._authorized is not None  # made by _client(), which built `call`
        self._abort.clear()
        with deadline_watchdog(deadline, self._https, self._abort) as expired:
            try:
                response, content = self._authorized.request(
                    call.uri, method=call.method, body=body, headers=headers
                )
            except Exception as error:
                if not expired.is_set():
                    raise
                if self._abort.is_set():
                    raise ControlPlaneError(
                        "abandoned: the agent is stopping", retryable=True
                    ) from error
                raise ControlPlaneError(
                    f"{self.TITLE}: no complete answer within the "
                    f"{deadline.total_seconds():g}s deadline ({type(error).__name__})",
                    retryable=True,
                ) from error
        if int(response.status) >= HTTPStatus.MULTIPLE_CHOICES:
            raise self._status_error(response, content)
        return bytes(content)

    def _status_error(self, response: httplib2.Response, content: bytes) -> ControlPlaneError:
        """The error for an answer with a status >= 300 (a subclass may word it its own way)."""
        return status_error(response, content, api=self.TITLE)
