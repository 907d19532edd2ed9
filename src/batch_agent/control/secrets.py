"""Secret Manager and Cloud KMS as the agent's tasks need them: `SecretsClient.access_secret`
(a secret version's payload) and `SecretsClient.decrypt` (a KMS ciphertext), every failure a
classified `SecretError`.

Each API is a `GoogleApi` (its own HTTP stack and credentials, the discovery client from the
static documents secretmanager v1 and cloudkms v1, a whole-call deadline, `abort`). Unlike the
report call, a secret call is retried here, within `budget`: a task waits for its secrets in
its prestart and has no loop of its own to retry. Each attempt ends within `CALL_DEADLINE`
(or what is left of the budget), so a hanging server costs a task at most its budget. It must
not log, persist or put a value in an error message: values are returned to the caller and
nowhere else. It must not read the environment.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import httplib2

from batch_agent.control.backoff import Backoff
from batch_agent.control.errors import ControlPlaneError, error_detail, is_retryable_status
from batch_agent.control.googleapi import GoogleApi

DEFAULT_SECRETMANAGER_ENDPOINT = "https://secretmanager.googleapis.com/"
DEFAULT_KMS_ENDPOINT = "https://cloudkms.googleapis.com/"
# How long one secret may take, retries of transient failures included (5xx, 429, 408, no
# connection, no token yet, no answer within the deadline); a permanent failure (403, 404, 400
# for a bad ciphertext) ends at once.
DEFAULT_BUDGET = timedelta(seconds=60)
# One attempt, every byte of the answer included: a hung connection is given up and the call
# retried on a fresh one while the budget lasts (an answer takes milliseconds when healthy).
CALL_DEADLINE = timedelta(seconds=20)
# The least an attempt is given, though the budget ran out while it waited for its turn.
_SHORTEST_ATTEMPT = timedelta(seconds=1)
# Statuses the report call retries (an IAM binding may propagate) but a secret does not: a
# task should fail with the API's word rather than wait out the budget on a missing grant.
_PERMANENT = frozenset({HTTPStatus.FORBIDDEN})


class SecretError(Exception):
    """A secret that could not be had; `permanent` when asking again cannot help (not found,
    permission denied, bad ciphertext), else the retry budget ran out on transient failures.
    The message is the API's error (never the value)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class SecretsClient:
    """Blocking Secret Manager and Cloud KMS calls; thread-safe (the calls to one API are
    serialised: a hanging one holds the next for at most its deadline).

    `options` go to each `GoogleApi`: credentials and proxies as for `ControlPlane`
    (`application_default`, `metadata_host`, `credentials`) and the socket `timeout`.
    Constructing does no I/O.
    """

    def __init__(
        self,
        *,
        secretmanager_endpoint: str = DEFAULT_SECRETMANAGER_ENDPOINT,
        kms_endpoint: str = DEFAULT_KMS_ENDPOINT,
        budget: timedelta = DEFAULT_BUDGET,
        deadline: timedelta = CALL_DEADLINE,
        **options: Any,
    ) -> None:
        self._secretmanager = _SecretManager(secretmanager_endpoint, deadline=deadline, **options)
        self._kms = _CloudKms(kms_endpoint, deadline=deadline, **options)
        self.budget = budget
        self._stopping = threading.Event()

    def access_secret(self, version_path: str) -> str:
        """The payload of `projects/P/secrets/S/versions/V` as text. BLOCKS (retries within the
        budget); raises SecretError."""
        answer = self._call(
            self._secretmanager,
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
            self._kms,
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

    def abort(self) -> None:
        """The agent is stopping: the calls in progress give up at once and none is retried
        or made (each raises SecretError). Thread-safe; for good."""
        self._stopping.set()
        self._secretmanager.abort()
        self._kms.abort()

    def close(self) -> None:
        """Close the HTTP connections (after the call in progress, if any); idempotent."""
        for api in (self._secretmanager, self._kms):
            with api.lock:
                api.close()

    def _call(self, api: _SecretApi, build: Callable[[Any], Any]) -> dict[str, Any]:
        backoff = Backoff(maximum=timedelta(seconds=10))
        give_up = time.monotonic() + self.budget.total_seconds()
        while True:
            try:
                with api.lock:
                    if self._stopping.is_set():
                        raise ControlPlaneError("abandoned: the agent is stopping", retryable=False)
                    left = timedelta(seconds=round(give_up - time.monotonic(), 1))
                    return api.answer(build, max(min(api.deadline, left), _SHORTEST_ATTEMPT))
            except ControlPlaneError as error:
                failure = SecretError(str(error), permanent=not error.retryable)
            delay = backoff.next_delay().total_seconds()
            if failure.permanent or time.monotonic() + delay > give_up:
                raise failure
            if self._stopping.wait(delay):  # a worker thread of one task's prestart
                raise failure


class _SecretApi(GoogleApi):
    """One of the two APIs: one call at a time (`lock`), its error statuses worded as Google
    names them (`404 NOT_FOUND: ...`: the task's event shows them)."""

    def __init__(self, endpoint: str, **options: Any) -> None:
        super().__init__(endpoint, **options)
        self.lock = threading.Lock()

    def answer(self, build: Callable[[Any], Any], deadline: timedelta) -> dict[str, Any]:
        """The JSON answer to the call `build` makes of the discovery client, within
        `deadline`. One attempt; hold `lock`. Raises ControlPlaneError."""
        content = self._classified("a call", lambda: self._send(build(self._client()), deadline))
        try:
            answer = json.loads(content)
        except (ValueError, RecursionError):  # garbage, or nested deep enough to overflow
            answer = None
        if not isinstance(answer, dict):
            raise ControlPlaneError(f"malformed answer from {self.API}", retryable=True)
        return answer

    def _status_error(self, response: httplib2.Response, content: bytes) -> ControlPlaneError:
        status = int(response.status)
        return ControlPlaneError(
            f"{status} {error_detail(response, content, status_name=True)}",
            retryable=status not in _PERMANENT and is_retryable_status(status),
            status=status,
        )


class _SecretManager(_SecretApi):
    API = "secretmanager"
    VERSION = "v1"
    TITLE = "Secret Manager"
    METHODS = ("projects.secrets.versions.access",)


class _CloudKms(_SecretApi):
    API = "cloudkms"
    VERSION = "v1"
    TITLE = "Cloud KMS"
    METHODS = ("projects.locations.keyRings.cryptoKeys.decrypt",)
