"""The Cloud Logging client: `CloudLogging`, one `entries.write` call with the same credentials,
HTTP stack, deadline and error classes as the Batch API client (all in `googleapi`).

It must not retry (the log writer owns retries, with `Backoff`), batch or build entries: it
sends the `WriteLogEntriesRequest` it is given. It must not read the environment.
"""

from __future__ import annotations

from typing import Any

from batch_agent.control.googleapi import GoogleApi

DEFAULT_LOGGING_ENDPOINT = "https://logging.googleapis.com/"


class CloudLogging(GoogleApi):
    """Cloud Logging's `entries.write`. Credentials and proxies as `ControlPlane`'s. Not
    thread-safe: one call at a time (sequential calls from different worker threads are
    fine); `abort` may be called from any thread."""

    API = "logging"
    VERSION = "v2"
    TITLE = "Cloud Logging"
    METHODS = ("entries.write",)

    def __init__(self, endpoint: str = DEFAULT_LOGGING_ENDPOINT, **options: Any) -> None:
        super().__init__(endpoint, **options)

    def write(self, body: bytes) -> None:
        """POST `{endpoint}v2/entries:write` with `body`, a `WriteLogEntriesRequest` in JSON.

        BLOCKS for at most about the deadline (call it from a worker thread). One attempt.
        Raises ControlPlaneError and nothing else; `status` 403 is a denial (API disabled or
        no `logging.logEntries.create`), `retryable` as for the Batch API."""
        # The body goes as given: the discovery client would str() and re-encode a dict body,
        # the largest cost of shipping. It builds the URI, method and headers from an empty one.
        self._classified(
            "a write",
            lambda: self._send(self._call(("entries",), "write"), self.deadline, body),
        )
