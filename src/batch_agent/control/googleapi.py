"""`GoogleApi`: what the agent's clients of one Google API share, so that each says only its
method: one authorised HTTP stack (credentials, proxies: `credentials.authorized_http`), each
request made from the discovery document google-api-python-client ships, one call at a time
under a whole-call deadline that `abort` can cut short, and every failure raised as a
classified `ControlPlaneError`.

A request is what googleapiclient's discovery client would build for the method, made here
from the same document (`_request`): the method's HTTP verb and path, its parameters checked
(required, pattern) and expanded into the path (RFC 6570), `?alt=json`, and JsonModel's
headers. The discovery client itself is not used: importing it and building a client cost the
agent's start-up ~20 ms of CPU before its first report, for those few lines of work. `_send`
sends a request, so that the status, headers and body of every answer are judged here. No
retries here: callers own them (`Backoff`). Must not read the environment.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import threading
import urllib.parse
from collections.abc import Callable
from datetime import timedelta
from http import HTTPStatus
from typing import Any, ClassVar, NamedTuple, TypeVar

import google_auth_httplib2
import httplib2
from googleapiclient.version import __version__ as _GDCL_VERSION

from batch_agent.control.credentials import authorized_http
from batch_agent.control.deadline import deadline_watchdog
from batch_agent.control.errors import ControlPlaneError, classify, status_error
from batch_agent.discovery import document
from batch_agent.vm import DEFAULT_METADATA_HOST

log = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_DEADLINE = timedelta(seconds=60)  # one whole call: token, request, every byte of answer
T = TypeVar("T")

# The headers googleapiclient's JsonModel gives every request (the wire stays as it was).
_HEADERS = {
    "accept": "application/json",
    "accept-encoding": "gzip, deflate",
    "user-agent": "(gzip)",
    "x-goog-api-client": f"gdcl/{_GDCL_VERSION} gl-python/{platform.python_version()}",
}
_TEMPLATE = re.compile(r"\{(\+?)([^}]+)\}")  # {name}, or {+name}: reserved expansion
_RESERVED = ":/?#[]@!$&'()*+,;="  # RFC 6570: what {+name} leaves as it is (and unreserved)


class Request(NamedTuple):
    """One HTTP request of a method, as googleapiclient would have built it."""

    uri: str
    method: str
    headers: dict[str, str]
    body: bytes | None  # None: none (a GET)


class GoogleApi:
    """One Google API, its requests made from its discovery document. Constructing does no I/O.
    Not thread-safe: one call at a time (sequential calls from different worker threads are
    fine); `abort` may be called from any thread. Subclasses name the API (`API`, `VERSION`,
    `TITLE`) and the methods they call (`METHODS`: `_request` makes only those)."""

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
        self._methods: dict[str, dict[str, Any]] = {}  # see _method
        self._requests: dict[tuple[str, ...], Request] = {}  # see _request
        self._authorized: google_auth_httplib2.AuthorizedHttp | None = None
        self._abort = threading.Event()  # set by abort(), cleared by each call
        self._https: list[httplib2.Http] = []  # every connection pool a call may use

    def abort(self) -> None:
        """Make the call in progress, if any, give up at once (it raises ControlPlaneError).
        Thread-safe: for a loop told to stop while a call hangs."""
        self._abort.set()

    def close(self) -> None:
        """Close the HTTP connections; idempotent. A later call makes a new HTTP stack."""
        for pool in self._https:
            pool.close()
        self._authorized, self._https = None, []

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

    def _http(self) -> google_auth_httplib2.AuthorizedHttp:
        """The authorised HTTP stack, made on first use and kept (until `close`)."""
        if self._authorized is None:
            self._authorized, self._https = authorized_http(
                self._credentials,
                application_default=self._application_default,
                metadata_host=self._metadata_host,
                timeout=self.timeout,
                scope=CLOUD_PLATFORM_SCOPE,
                early_token=self._early_token,
            )
            self._early_token = None  # a stack made again later gets a fresh token
        return self._authorized

    def _method(self, name: str) -> dict[str, Any]:
        """The discovery document's description of `name` (one of `METHODS`), kept."""
        method = self._methods.get(name)
        if method is None:
            if name not in self.METHODS:
                raise TypeError(f"{self.TITLE}: {name} is not one of its methods")
            *path, last = name.split(".")
            found: dict[str, Any] = document(f"{self.API}.{self.VERSION}")
            for resource in path:
                found = found["resources"][resource]
            method = self._methods[name] = found["methods"][last]
        return method

    def _request(self, name: str, body: object = None, /, **params: str) -> Request:
        """The request of method `name` with `params` and `body` (JSON-encoded here; None:
        none), as googleapiclient would build it. Raises TypeError for a parameter missing,
        unknown or not matching the document's pattern, as it would. One without a body is
        kept for the same `params` (each report's: `_send` gives it the body)."""
        key = (name, *(f"{k}={v}" for k, v in sorted(params.items())))
        if body is None and key in self._requests:
            return self._requests[key]
        method = self._method(name)
        described: dict[str, Any] = method.get("parameters", {})
        for param in params:
            if param not in described:
                raise TypeError(f"Got an unexpected keyword argument {param}")
        for param, spec in described.items():
            value = params.get(param)
            if value is None:
                if spec.get("required"):
                    raise TypeError(f'Missing required parameter "{param}"')
                continue
            pattern = spec.get("pattern")
            if pattern is not None and re.match(pattern, value) is None:
                raise TypeError(
                    f'Parameter "{param}" value "{value}" does not match the pattern "{pattern}"'
                )

        def expand(match: re.Match[str]) -> str:
            safe = _RESERVED if match[1] else ""
            return urllib.parse.quote(params[match[2]], safe=safe)

        query = {p: v for p, v in params.items() if described[p].get("location") == "query"}
        query["alt"] = "json"
        uri = self.endpoint + _TEMPLATE.sub(expand, method["path"]).lstrip("/")
        headers = dict(_HEADERS)
        encoded = None
        if body is not None:
            headers["content-type"] = "application/json"
            encoded = json.dumps(body).encode()
        uri += "?" + urllib.parse.urlencode(query)
        request = Request(uri, method["httpMethod"], headers, encoded)
        if body is None:
            self._requests[key] = request
        return request

    def _send(self, call: Request, deadline: timedelta, body: bytes | None = None) -> bytes:
        """Send `call` (with `body` instead of its own, already encoded) within `deadline`;
        return the body of a 2xx answer, raise for the rest."""
        if body is None:
            body = call.body
        headers = {**call.headers, "content-length": str(len(body or b""))}
        authorized = self._http()
        self._abort.clear()
        with deadline_watchdog(deadline, self._https, self._abort) as expired:
            try:
                response, content = authorized.request(
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
