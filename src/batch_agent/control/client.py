"""The Batch API client: `ControlPlane`, one `state:report` call with its credentials and its
deadline, every failure raised as a classified `ControlPlaneError`.

What every Google API client of the agent shares (HTTP stack, discovery client, deadline,
abort) lives in `googleapi`; what failures mean in `errors`, the metadata-server token in
`credentials`. It must not retry: a call either returns a response or raises, and the agent
loop owns retries (see `Backoff`). It must not read the environment: the caller passes the
metadata host and says whether to use Application Default Credentials (httplib2 reads the
proxy variables itself).
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from batch_agent.control.errors import ControlPlaneError
from batch_agent.control.googleapi import CLOUD_PLATFORM_SCOPE, DEFAULT_DEADLINE, GoogleApi
from batch_agent.wire import MalformedResponse, ReportAgentStateResponse, parse_response

log = logging.getLogger(__name__)

__all__ = ["CLOUD_PLATFORM_SCOPE", "DEFAULT_DEADLINE", "ControlPlane"]


class ControlPlane(GoogleApi):
    """The Batch API `state:report` method, with credentials.

    Credentials, in order: `credentials` if given (any google-auth credentials); else, when
    `application_default` is true (the caller sets it when GOOGLE_APPLICATION_CREDENTIALS is
    set), google-auth's Application Default Credentials, which read that variable themselves;
    else the VM's service account through the metadata server at `metadata_host` (host:port,
    as GCE_METADATA_HOST gives it), its first token from `early_token` when that gives one
    (the same server's answer, asked early: `vm.EarlyAnswers.first`).

    Proxies: the Batch API (and the OAuth token endpoint of Application Default Credentials)
    is reached through `https_proxy`/`http_proxy` unless `no_proxy` names its host, as
    httplib2 (with PySocks) does for every google-api-python-client user. The metadata server
    never goes through a proxy: it answers only on the VM itself.

    `timeout` bounds each socket operation; `deadline` bounds a whole `report`, however the
    server trickles its answer. Constructing does no I/O; the client is built on the first
    `report` and kept. Not thread-safe: one call at a time (sequential calls from different
    worker threads are fine).
    """

    API = "batch"
    VERSION = "v1"
    TITLE = "Batch API"
    METHODS = ("projects.locations.state.report",)

    def report(
        self,
        parent: str,
        request: dict[str, Any],
        *,
        deadline: timedelta | None = None,
    ) -> ReportAgentStateResponse:
        """POST `request` (a ReportAgentStateRequest's `to_wire()`: the caller encodes it once,
        for its log too) to `{endpoint}v1/{parent}/state:report`; return the parsed response.

        BLOCKS for at most about `deadline`, plus a connection attempt under way at that
        moment (itself bounded by `timeout`) and name resolution; `deadline` defaults to the
        constructor's (a last report at shutdown may want a shorter one: no caller can cancel
        a worker thread). Call it from a worker thread (`asyncio.to_thread`), one call at a
        time. Makes one attempt (a token refresh and one resend after a 401 are part of it).
        Raises ControlPlaneError and nothing else: every failure, expected or not, is
        classified, and `retryable` tells the caller what to do.
        """
        deadline = deadline or self.deadline
        return self._classified("a report", lambda: self._report(parent, request, deadline))

    def _report(
        self, parent: str, request: dict[str, Any], deadline: timedelta
    ) -> ReportAgentStateResponse:
        call = self._call(("projects", "locations", "state"), "report", parent=parent)
        content = self._send(call, deadline, json.dumps(request).encode())
        try:
            return parse_response(content)
        except MalformedResponse as error:
            # A 2xx that is not a ReportAgentStateResponse: a broken proxy or a server hiccup.
            # Retrying is safe: the next report carries the full state again.
            log.warning("control plane: malformed response %.200r: %s", content, error)
            raise ControlPlaneError(
                f"malformed Batch API response: {error}", retryable=True
            ) from error
