"""The emulator's HTTP layer: one loopback listener per VM, routing, and writing replies.

Routes `/computeMetadata/v1/...` (after checking `Metadata-Flavor`), the Batch API's
`state:report`, Secret Manager's `:access`, Cloud KMS's `:decrypt` and Cloud Logging's
`entries:write` to a `Backend`, answers
`/` as GCE's metadata root does, and 404s anything else.
Connections serve one request each (HTTP/1.0) so that closing a listener never waits on an idle
keep-alive peer. HTTP/1.0 with a `Content-Length` body is all its clients speak (httplib2,
urllib, google-auth), so it reads a request and writes a reply itself, in one `sendall`:
`http.server`'s handler cost ~1 ms of CPU a request (a thread started for each, headers parsed
by the email package, a write per header), the most of what `local` spends per task on a
trivial answer. Threads that served a request serve the next ones (`_Workers`). Parses and
writes only: must not hold emulator state or make a decision, and knows the core only through
`backend.Backend`.
"""

from __future__ import annotations

import io
import logging
import queue
import re
import socket
import socketserver
import threading
from collections.abc import Callable
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
_TIMEOUT = 10.0  # seconds a client may take to send its request
_MAX_LINE = 65536  # bytes of a request line or header line, as http.server allows
_MAX_HEADERS = 100
_MAX_BODY = 64 * 1024 * 1024  # beyond Cloud Logging's 10 MB request limit, which answers 400
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Content Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Listeners:
    """One bound listener per VM on `host` (VM 0's on `port`, the others on free ports).

    The constructor binds every socket (raises OSError, leaving nothing open, if one cannot be
    bound); `serve()` answers requests in daemon threads; `close()` stops serving, waits for the
    requests in flight and closes every socket (idempotent).
    """

    def __init__(self, backend: Backend, host: str, port: int, vms: int) -> None:
        self._listeners: list[_Listener] = []
        self._threads: list[threading.Thread] = []
        self._workers = _Workers()
        try:
            for vm in range(vms):
                address = (host, port if vm == 0 else 0)
                self._listeners.append(_Listener(address, backend, vm, self._workers))
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
        for thread in self._threads:
            thread.join()
        self._workers.close()  # the requests in flight are answered first
        for listener in self._listeners:
            listener.server_close()
        self._listeners.clear()
        self._threads.clear()


class _Workers:
    """Daemon threads that serve accepted connections, each kept for the next one: a thread is
    started only when none is idle, so a request never waits behind a blocked one (a metadata
    long poll). `close()` lets every thread finish what it was given, then joins them."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job that no submit has claimed yet
        self._threads: list[threading.Thread] = []

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                thread = threading.Thread(
                    target=self._work, name=f"emulator-request-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # one bad request must not take the thread (or others) down
                log.exception("emulator: request failed")
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        with self._lock:
            threads, self._threads, self._idle = list(self._threads), [], 0
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join()


class _Listener(socketserver.TCPServer):
    """One VM's server: metadata for `vm`; the Batch API too (reports name their VM by token)."""

    allow_reuse_address = True
    # socketserver's default backlog of 5 drops the SYNs of an agent's start-up (its metadata
    # reads come all at once) whenever this process is slow to accept: each costs the client a
    # 1 s retransmit (measured: 6 in 90 batches of 8 reads).
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], backend: Backend, vm: int, workers: _Workers
    ) -> None:
        self.backend = backend
        self.vm = vm
        self._workers = workers
        super().__init__(address, socketserver.BaseRequestHandler)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        def serve() -> None:
            try:
                _Exchange(self, request).serve()
            finally:
                self.shutdown_request(request)

        self._workers.submit(serve)


class _Exchange:
    """One request read from `sock` and its reply written back."""

    def __init__(self, server: _Listener, sock: socket.socket) -> None:
        self.server = server
        self._sock = sock
        self.headers: dict[str, str] = {}  # names in lower case

    def serve(self) -> None:
        self._sock.settimeout(_TIMEOUT)
        try:
            with self._sock.makefile("rb") as rfile:
                reply = self._read(rfile)
            self._send(reply)
        except (TimeoutError, ConnectionError):
            # The client went away or stalled (an agent killed mid long-poll): nothing to answer.
            log.debug("emulator: a client left before its answer")

    def _read(self, rfile: io.BufferedReader) -> Reply:
        """Read the request and answer it; a malformed one gets a 4xx/501 as http.server's."""
        readline = rfile.readline
        line = readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            return _plain(414, "request line too long")
        words = line.decode("iso-8859-1").split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            return _plain(400, f"bad request line {line[:100]!r}")
        method, path, _version = words
        for _ in range(_MAX_HEADERS + 1):
            line = readline(_MAX_LINE + 1)
            if len(line) > _MAX_LINE:
                return _plain(431, "header line too long")
            if line in (b"\r\n", b"\n", b""):
                break
            name, colon, value = line.decode("iso-8859-1").partition(":")
            if colon:
                self.headers[name.strip().lower()] = value.strip()
        else:
            return _plain(431, "too many headers")
        length = self.headers.get("content-length") or "0"
        if not length.isdigit() or int(length) > _MAX_BODY:
            return _plain(400, f"bad Content-Length {length[:20]!r}")
        raw = rfile.read(int(length)) if length != "0" else b""
        log.debug("emulator vm-%d: %s %s", self.server.vm, method, path)
        if method not in ("GET", "POST"):
            return _plain(501, f"Unsupported method ({method!r})")
        return self._route(method, path, raw)

    def _route(self, method: str, path: str, raw: bytes) -> Reply:
        url = urlsplit(path)
        query = dict(parse_qsl(url.query))
        if url.path == "/":
            return Reply(200, b"", "text/plain", _FLAVOR)
        if url.path.startswith(PREFIX) or url.path == PREFIX.rstrip("/"):
            if self.headers.get("metadata-flavor") != "Google":
                body = b"Missing required header: Metadata-Flavor: Google\n"
                return Reply(403, body, "text/plain", _FLAVOR)
            key = url.path.removeprefix(PREFIX).removeprefix(PREFIX[:-1])
            return self.server.backend.answer_metadata(self.server.vm, key, query)
        authorization = self.headers.get("authorization")
        backend = self.server.backend
        if method == "POST" and (match := _REPORT.fullmatch(url.path)):
            return backend.answer_report(match[1], match[2], raw, authorization)
        if method == "GET" and (match := _SECRET_ACCESS.fullmatch(url.path)):
            return backend.answer_secret_access(match[1], authorization)
        if method == "POST" and (match := _KMS_DECRYPT.fullmatch(url.path)):
            return backend.answer_kms_decrypt(match[1], raw, authorization)
        if method == "POST" and url.path == _LOG_WRITE:
            return backend.answer_log_write(raw, authorization)
        return google_error(404, f"{method} {url.path} is not served by the emulator")

    def _send(self, reply: Reply) -> None:
        """The status line, headers and body in one write; the connection closes after it."""
        reason = _REASONS.get(reply.status, "")
        head = [
            f"HTTP/1.0 {reply.status} {reason}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
            *(f"{name}: {value}" for name, value in reply.headers.items()),
        ]
        self._sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)


def _plain(status: int, message: str) -> Reply:
    return Reply(status, message.encode() + b"\n", "text/plain")
