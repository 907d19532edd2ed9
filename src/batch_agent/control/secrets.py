"""Secret Manager and Cloud KMS as the agent's tasks need them: `SecretsClient.access_secret`
(a secret version's payload) and `SecretsClient.decrypt` (a KMS ciphertext), every failure a
classified `SecretError`.

Built like `client.ControlPlane`: googleapiclient's static discovery documents (secretmanager v1,
cloudkms v1, shipped in its discovery_cache), the same credentials (a metadata-server token, or
Application Default Credentials) and the same httplib2 stack. Unlike the report call, a secret
call is retried here, within `budget`: a task waits for its secrets in its prestart and has no
loop of its own to retry. It must not log, persist or put a value in an error message: values
are returned to the caller and nowhere else. It must not read the environment.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import google_auth_httplib2
import httplib2
from googleapiclient import discovery

from batch_agent.control.backoff import Backoff
from batch_agent.control.credentials import authorized_http
from batch_agent.control.errors import classify, is_retryable_status
from batch_agent.control.googleapi import CLOUD_PLATFORM_SCOPE
from batch_agent.vm import DEFAULT_METADATA_HOST

DEFAULT_SECRETMANAGER_ENDPOINT = "https://secretmanager.googleapis.com/"
DEFAULT_KMS_ENDPOINT = "https://cloudkms.googleapis.com/"
# How long one secret may take, retries of transient failures included (5xx, 429, 408, no
# connection, no token yet); a permanent failure (403, 404, 400 for a bad ciphertext) ends at once.
DEFAULT_BUDGET = timedelta(seconds=60)


class SecretError(Exception):
    """A secret that could not be had; `permanent` when asking again cannot help (not found,
    permission denied, bad ciphertext), else the retry budget ran out on transient failures.
    The message is the API's error (never the value)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class SecretsClient:
    """Blocking Secret Manager and Cloud KMS calls; thread-safe (calls are serialised).

    Credentials as for `ControlPlane`: `application_default` (GOOGLE_APPLICATION_CREDENTIALS
    is set) or the metadata server at `metadata_host`. Constructing does no I/O.
    """

    def __init__(
        self,
        *,
        secretmanager_endpoint: str = DEFAULT_SECRETMANAGER_ENDPOINT,
        kms_endpoint: str = DEFAULT_KMS_ENDPOINT,
        timeout: timedelta = timedelta(seconds=30),
        budget: timedelta = DEFAULT_BUDGET,
        application_default: bool = False,
        metadata_host: str = DEFAULT_METADATA_HOST,
        credentials: object | None = None,
    ) -> None:
        self._endpoints = {
            "secretmanager": _slashed(secretmanager_endpoint),
            "cloudkms": _slashed(kms_endpoint),
        }
        self._timeout = timeout
        self.budget = budget
        self._application_default = application_default
        self._metadata_host = metadata_host
        self._credentials = credentials
        self._lock = threading.Lock()
        self._authorized: google_auth_httplib2.AuthorizedHttp | None = None
        self._services: dict[str, Any] = {}

    def access_secret(self, version_path: str) -> str:
        """The payload of `projects/P/secrets/S/versions/V` as text. BLOCKS (retries within the
        budget); raises SecretError."""
        answer = self._call(
            "secretmanager",
            lambda s: s.projects().secrets().versions().access(name=version_path),
        )
        try:
            data = base64.b64decode(answer["payload"]["data"], validate=True)
            return data.decode()
        except (KeyError, TypeError, binascii.Error, UnicodeDecodeError) as error:
            raise SecretError(
                f"Secret Manager sent no usable payload ({type(error).__name__})", permanent=True
            ) from None

    def decrypt(self, key_name: str, ciphertext_b64: str) -> bytes:
        """The plaintext of a base64 `ciphertext_b64` made with the KMS key `key_name`
        (`projects/P/locations/L/keyRings/R/cryptoKeys/K`). BLOCKS; raises SecretError."""
        answer = self._call(
            "cloudkms",
            lambda s: (
                s.projects()
                .locations()
                .keyRings()
                .cryptoKeys()
                .decrypt(name=key_name, body={"ciphertext": ciphertext_b64})
            ),
        )
        try:
            return base64.b64decode(answer["plaintext"], validate=True)
        except (KeyError, TypeError, binascii.Error) as error:
            raise SecretError(
                f"Cloud KMS sent no usable plaintext ({type(error).__name__})", permanent=True
            ) from None

    def close(self) -> None:
        with self._lock:
            for service in self._services.values():
                service.close()
            self._services, self._authorized = {}, None

    def _call(self, api: str, build: Any) -> dict[str, Any]:
        backoff = Backoff(maximum=timedelta(seconds=10))
        give_up = time.monotonic() + self.budget.total_seconds()
        while True:
            try:
                with self._lock:
                    return self._once(api, build)
            except SecretError as error:
                delay = backoff.next_delay().total_seconds()
                if error.permanent or time.monotonic() + delay > give_up:
                    raise
                time.sleep(delay)  # a worker thread of one task's prestart

    def _once(self, api: str, build: Any) -> dict[str, Any]:
        try:
            call = build(self._service(api))
            response, content = self._authorized_http().request(
                call.uri, method=call.method, body=call.body, headers=dict(call.headers)
            )
        except Exception as error:
            classified = classify(error)
            if classified is None:
                raise SecretError(f"{type(error).__name__}: {error}", permanent=True) from None
            raise SecretError(str(classified), permanent=not classified.retryable) from None
        status = int(response.status)
        if status >= HTTPStatus.MULTIPLE_CHOICES:
            permanent = status in _PERMANENT or not is_retryable_status(status)
            raise SecretError(f"{status} {_detail(response, content)}", permanent=permanent)
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise SecretError(f"malformed answer from {api}", permanent=False)
        return answer

    def _authorized_http(self) -> google_auth_httplib2.AuthorizedHttp:
        if self._authorized is None:
            self._authorized, _pools = authorized_http(
                self._credentials,
                application_default=self._application_default,
                metadata_host=self._metadata_host,
                timeout=self._timeout,
                scope=CLOUD_PLATFORM_SCOPE,
            )
        return self._authorized

    def _service(self, api: str) -> Any:
        if api not in self._services:
            self._services[api] = discovery.build(
                api,
                "v1",
                http=self._authorized_http(),
                static_discovery=True,
                client_options={"api_endpoint": self._endpoints[api]},
            )
        return self._services[api]


# Statuses the report call retries (an IAM binding may propagate) but a secret does not: a
# task should fail with the API's word rather than wait out the budget on a missing grant.
_PERMANENT = frozenset({HTTPStatus.FORBIDDEN})


def _slashed(endpoint: str) -> str:
    # googleapiclient joins "v1/..." onto the endpoint: it needs the trailing slash.
    return endpoint if endpoint.endswith("/") else endpoint + "/"


def _detail(response: httplib2.Response, content: bytes) -> str:
    """The status name and message of a googleapis error body, else the reason; cut short."""
    try:
        error = json.loads(content)["error"]
        text = f"{error.get('status') or ''}: {error['message']}".lstrip(": ")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        text = str(response.reason or "") or repr(content[:200])
    return text if len(text) <= 500 else text[:500] + "..."
