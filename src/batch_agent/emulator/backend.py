"""The contract between the emulator's HTTP layer and its core: `Backend` and the `Reply` values.

`http` parses requests and writes `Reply`s; everything it asks of the core goes through the
`Backend` protocol (which `Emulator` implements). `google_error` is the one place that spells
Google's error body, for both sides. Plain types only: must not import the core or `http`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

JSON = "application/json; charset=UTF-8"
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass(frozen=True)
class Reply:
    """An HTTP answer as the core decided it; the HTTP layer writes it as it is."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)


def google_error(code: int, message: str, details: Sequence[Mapping[str, Any]] = ()) -> Reply:
    """A Google API error: {"error": {"code", "message", "status"[, "details"]}} with HTTP
    status `code`; `details` are `google.rpc` messages, each with its `@type`."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": _STATUS_NAMES.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = list(details)
    return Reply(code, json.dumps({"error": error}).encode())


class Backend(Protocol):
    """What the HTTP layer needs answered. Called from request threads, concurrently."""

    def answer_metadata(self, vm: int, key: str, query: Mapping[str, str]) -> Reply:
        """VM `vm`'s metadata `key` (the path after `/computeMetadata/v1/`) for this query.

        `instance/preempted?wait_for_change=true` blocks until the value changes, its
        `timeout_sec` passes or the emulator stops."""
        ...

    def answer_report(
        self, project: str, location: str, body: bytes, authorization: str | None
    ) -> Reply:
        """A `projects/{project}/locations/{location}/state:report` call with this raw body and
        `Authorization` header (which names the reporting VM by its emulated token)."""
        ...

    def answer_secret_access(self, name: str, authorization: str | None) -> Reply:
        """Secret Manager's `GET v1/{name}:access` (`name`: a secret version path)."""
        ...

    def answer_kms_decrypt(self, name: str, body: bytes, authorization: str | None) -> Reply:
        """Cloud KMS's `POST v1/{name}:decrypt` (`name`: a crypto key) with this raw body."""
        ...

    def answer_log_write(self, body: bytes, authorization: str | None) -> Reply:
        """Cloud Logging's `POST v2/entries:write` with this raw body."""
        ...
