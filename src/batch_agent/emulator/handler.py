"""HTTP routing of the emulator: one listener per VM; metadata, `state:report`, errors.

Parses requests and writes responses only; every decision is made by `Emulator` under its lock.
Connections serve one request each (HTTP/1.0) so that closing a listener never waits on an idle
keep-alive peer. Must not hold emulator state of its own.
"""

from __future__ import annotations

import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from batch_agent.emulator import metadata

if TYPE_CHECKING:
    from batch_agent.emulator.server import Emulator

log = logging.getLogger(__name__)

_REPORT = re.compile(r"/v1/projects/([^/]+)/locations/([^/]+)/state:report")
_JSON = "application/json; charset=UTF-8"
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


def google_error(code: int, message: str) -> bytes:
    """A Google API error body: {"error": {"code", "message", "status"}}."""
    error = {"code": code, "message": message, "status": _STATUS_NAMES.get(code, "UNKNOWN")}
    return json.dumps({"error": error}).encode()


class Listener(ThreadingHTTPServer):
    """One VM's server: metadata for `vm`; the Batch API too (reports name their VM by token)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], emulator: Emulator, vm: int) -> None:
        self.emulator = emulator
        self.vm = vm
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    server: Listener
    protocol_version = "HTTP/1.0"  # one request per connection: stop() never waits on idle peers
    timeout = 10

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("emulator %s: " + format, self.address_string(), *args)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        flavor = {"Metadata-Flavor": "Google"}
        if url.path == "/":
            self._send(200, b"", "text/plain", flavor)
        elif url.path.startswith(metadata.PREFIX) or url.path == metadata.PREFIX.rstrip("/"):
            if self.headers.get("Metadata-Flavor") != "Google":
                body = b"Missing required header: Metadata-Flavor: Google\n"
                self._send(403, body, "text/plain", flavor)
                return
            key = url.path.removeprefix(metadata.PREFIX).removeprefix(metadata.PREFIX[:-1])
            answer, headers = self.server.emulator._handle_metadata(self.server.vm, key, query)
            kind = "application/json" if answer.is_json else "text/plain"
            self._send(answer.status, answer.body.encode(), kind, headers)
        elif method == "POST" and (match := _REPORT.fullmatch(url.path)):
            status, body = self.server.emulator._handle_report(
                match[1], match[2], raw, self.headers.get("Authorization")
            )
            self._send(status, body, _JSON, {})
        else:
            message = f"{method} {url.path} is not served by the emulator"
            self._send(404, google_error(404, message), _JSON, {})

    def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client went away (an agent killed mid long-poll): nothing to answer.
            log.debug("emulator: %s left before its answer", self.address_string())
