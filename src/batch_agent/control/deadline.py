"""A per-call deadline for blocking httplib2 calls: a watchdog thread that, once the deadline
has passed, shuts down the sockets the call is blocked on.

httplib2's `timeout` bounds each socket operation, not a whole call: a server that trickles
one byte per timeout keeps a caller forever. No caller can cancel a worker thread, so the
watchdog wakes the blocked read instead. This module must not classify or retry: it only says
(with an event) whether the deadline expired; the caller turns that into an error.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta

import httplib2

_ABORT_POLL = 0.1  # seconds: how soon an abort is seen


@contextlib.contextmanager
def deadline_watchdog(
    deadline: timedelta, pools: Sequence[httplib2.Http], abort: threading.Event | None = None
) -> Iterator[threading.Event]:
    """While inside, a watchdog thread waits for `deadline` (or for `abort`, set from another
    thread); once it has passed it sets the yielded event and shuts down every socket of
    every pool (again every 0.1 s, for those httplib2 reconnects) until the block exits, so a
    blocked read returns at once. The pools are then closed: the next call starts on fresh
    connections."""
    done, expired = threading.Event(), threading.Event()
    end = time.monotonic() + deadline.total_seconds()

    def watch() -> None:
        while not (abort is not None and abort.is_set()):
            left = end - time.monotonic()
            if left <= 0:
                break
            if done.wait(min(left, _ABORT_POLL)):
                return
        expired.set()
        while True:
            for pool in pools:
                _shut_down_sockets(pool)
            if done.wait(0.1):
                return

    watchdog = threading.Thread(target=watch, name="control-plane-deadline", daemon=True)
    watchdog.start()
    try:
        yield expired
    finally:
        done.set()
        watchdog.join()
        if expired.is_set():
            for pool in pools:
                pool.close()


def _shut_down_sockets(pool: httplib2.Http) -> None:
    """Wake any read or write blocked on a socket of `pool` (called from another thread).

    `socket.socket.shutdown` on the file descriptor, bypassing SSLSocket's override, which
    would tear down TLS state under the reading thread; the reader sees EOF or an error.
    """
    for connection in list(pool.connections.values()):
        sock = getattr(connection, "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
