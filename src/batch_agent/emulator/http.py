"""The emulator's HTTP layer: one loopback listener per VM, routing, and writing replies.

Routes `/computeMetadata/v1/...` (after checking `Metadata-Flavor`), the Batch API's
`state:report`, Secret Manager's `:access`, Cloud KMS's `:decrypt` and Cloud Logging's
`entries:write` to a `Backend`, answers
`/` as GCE's metadata root does, and 404s anything else.
Connections serve one request each (HTTP/1.0) so that closing a listener never waits on an idle
keep-alive peer. Parses and writes only: must not hold emulator state or make a decision, and
knows the core only through `backend.Backend`.
"""

from __future__ import annotations

import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from batch_agent.emulator.backend import Backend, Reply, google_error
from batch_agent.emulator.metadata import PREFIX

log = logging.getLogger(__name__)

_REPORT = re.compile(r"/v1/projects/([^/]+)/locations/([^/]+)/state:report")
_SECRET_ACCESS = re.compile(r"/v1/(projects/[^/]+/secrets/[^/]+/versions/[^/:]+):access")
_KMS_DECRYPT = re.compile(
    r"/v1/(projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/:]+):decrypt"
)
_LOG_WRITE = "/v2/entries:write"
_FLAVOR = {"Metadata-Flavor": "Google"}
# How often serve_forever looks for close(): the bound on how long close() takes per listener.
_POLL_INTERVAL = 0.05


class Listeners:
    """One bound listener per VM on `host` (VM 0's on `port`, the others on free ports).

    The constructor binds every socket (raises OSError, leaving nothing open, if one cannot be
    bound); `serve()` answers requests in daemon threads; `close()` stops serving, waits for the
    requests in flight and closes every socket (idempotent).
    """

    def __init__(self, backend: Backend, host: str, port: int, vms: int) -> None:
        self._listeners: list[_Listener] = []
        self._threads: list[threading.Thread] = []
        try:
            for vm in range(vms):
                self._listeners.append(_Listener((host, port if vm == 0 else 0), backend, vm))
        except BaseException:
            self.close()
            raise

    @property
    def ports(self) -> list[int]:
        """The bound port of each VM's listener, in VM order."""
        return [listener.server_address[1] for listener in self._listeners]

    def serve(self) -> None:
        """Start answering requests, one daemon thread per listener (once)."""
        if self._threads:
            raise RuntimeError("listeners already served")
        for listener in self._listeners:
            thread = threading.Thread(
                target=listener.serve_forever,
                args=(_POLL_INTERVAL,),
                name=f"emulator-vm-{listener.vm}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def close(self) -> None:
        if self._threads:  # shutdown() waits for serve_forever: only once it was started
            for listener in self._listeners:
                listener.shutdown()
        for listener in self._listeners:
            listener.server_close()
        for thread in self._threads:
            thread.join()
        self._listeners.clear()
        self._threads.clear()


class _Listener(ThreadingHTTPServer):
    """One VM's server: metadata for `vm`; the Batch API too (reports name their VM by token)."""

    daemon_threads = True
    # socketserver's default backlog of 5 drops the SYNs of an agent's start-up (its metadata
    # reads come all at once) whenever this process is slow to accept: each costs the client a
    # 1 s retransmit (measured: 6 in 90 batches of 8 reads).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], backend: Backend, vm: int) -> None:
        self.backend = backend
        self.vm = vm
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Listener
    protocol_version = "HTTP/1.0"  # one request per connection: close() never waits on idle peers
    timeout = 10

    def do_GET(self) -> None:
        self._send(self._route("GET"))

    def do_POST(self) -> None:
        self._send(self._route("POST"))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("emulator %s: " + format, self.address_string(), *args)

    def _route(self, method: str) -> Reply:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if url.path == "/":
            return Reply(200, b"", "text/plain", _FLAVOR)
        if url.path.startswith(PREFIX) or url.path == PREFIX.rstrip("/"):
            if self.headers.get("Metadata-Flavor") != "Google":
                body = b"Missing required header: Metadata-Flavor: Google\n"
                return Reply(403, body, "text/plain", _FLAVOR)
            key = url.path.removeprefix(PREFIX).removeprefix(PREFIX[:-1])
            return self.server.backend.answer_metadata(self.server.vm, key, query)
        if method == "POST" and (match := _REPORT.fullmatch(url.path)):
            authorization = self.headers.get("Authorization")
            return self.server.backend.answer_report(match[1], match[2], raw, authorization)
        if method == "GET" and (match := _SECRET_ACCESS.fullmatch(url.path)):
            authorization = self.headers.get("Authorization")
            return self.server.backend.answer_secret_access(match[1], authorization)
        if method == "POST" and (match := _KMS_DECRYPT.fullmatch(url.path)):
            authorization = self.headers.get("Authorization")
            return self.server.backend.answer_kms_decrypt(match[1], raw, authorization)
        if method == "POST" and url.path == _LOG_WRITE:
            authorization = self.headers.get("Authorization")
            return self.server.backend.answer_log_write(raw, authorization)
        return google_error(404, f"{method} {url.path} is not served by the emulator")

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            # The client went away (an agent killed mid long-poll): nothing to answer.
            log.debug("emulator: %s left before its answer", self.address_string())
