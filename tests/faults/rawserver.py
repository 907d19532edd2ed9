"""Raw-socket servers on 127.0.0.1 that misbehave on purpose, for the fault suite.

`RawServer` reads one HTTP request per connection and hands the socket to a scripted answer
(garbage, a short body, a reset, a trickle); `LateServer` answers 503 until it is told it is
up, then relays to a real server; `TunnelProxy` is a minimal HTTP CONNECT proxy
that records what it was asked to reach. All run in daemon threads, serve only loopback
clients, and stop (closing every socket) on `stop()`; nothing here knows batch_agent.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

Answer = Callable[[socket.socket, threading.Event], None]


def read_request(conn: socket.socket) -> bytes:
    """Read one request (headers and a Content-Length body); b"" if the client went away."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def reset(conn: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER with a zero timeout)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class _Server:
    """A listening socket on 127.0.0.1:0 whose connections are served in daemon threads."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._spawn(self._accept_loop)

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(timeout=10)
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._spawn(self._serve, self.track(conn))

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError


class RawServer(_Server):
    """Answers every request with `answer(conn, stopping)`, then closes the connection.

    `requests` holds each request read; `answer_ended` is set when an answer function
    returns or raises (a trickle cut short by the client raises BrokenPipe/ConnectionReset).
    """

    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self._answer = answer
        self.requests: list[bytes] = []
        self.cut_off = threading.Event()  # the client went away in the middle of an answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = read_request(conn)
                if not request:
                    return
                self.requests.append(request)
                self._answer(conn, self.stopping)
            except OSError:
                if not self.stopping.is_set():
                    self.cut_off.set()


class LateServer(_Server):
    """A server that is not up yet: every request is answered 503 until `up` is set, then
    relayed as it came to `target` (host:port, a server that closes each connection after its
    answer, as the emulator does), its answer relayed back."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.up = threading.Event()
        self._target = target

    def _serve(self, conn: socket.socket) -> None:
        # A client gone before its answer (a long poll at the agent's exit) ends the relay.
        with conn, contextlib.suppress(OSError):
            request = read_request(conn)
            if not request:
                return
            if not self.up.is_set():
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                return
            host, _, port = self._target.rpartition(":")
            with self.track(socket.create_connection((host, int(port)), timeout=30)) as upstream:
                upstream.sendall(request)
                while chunk := upstream.recv(65536):
                    conn.sendall(chunk)


class TunnelProxy(_Server):
    """An HTTP proxy that serves only CONNECT (as PySocks speaks it for every scheme);
    `targets` lists the host:port of each tunnel asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.targets.append(target)
            host, _, port = target.rpartition(":")
            try:
                upstream = self.track(socket.create_connection((host, int(port)), timeout=10))
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with upstream:
                self._spawn(_pipe, upstream, client)
                _pipe(client, upstream)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes until `source` ends, then end `sink`'s writing side."""
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
