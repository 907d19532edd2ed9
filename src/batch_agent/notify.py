"""sd_notify with the standard library: tell systemd we are ready, alive, busy with what, stopping.

A datagram of `KEY=value` lines to the unix socket named by `$NOTIFY_SOCKET` (a leading `@`
is the abstract namespace). Without `NOTIFY_SOCKET` every call is a no-op, so the agent runs
the same outside systemd. `$WATCHDOG_USEC` (and `$WATCHDOG_PID`, when it names another
process, which then owns the watchdog) gives the interval the caller must ping within; we
advise half of it. Sending never raises and never blocks the caller for long: a lost
notification is logged, never fatal. Knows nothing of reports or tasks.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from datetime import timedelta

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        # An abstract socket's name starts with a NUL byte; systemd spells it `@`.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def alive(self, status: str) -> None:
        """WATCHDOG=1 when systemd watches us, with a fresh STATUS either way."""
        if self.watchdog_interval is not None:
            self.send(WATCHDOG="1", STATUS=status)
        else:
            self.send(STATUS=status)

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="stopping")

    def send(self, **fields: str) -> None:
        """One datagram of `KEY=value` lines; a no-op without NOTIFY_SOCKET. Never raises."""
        if not self._address:
            return
        # One line per field: a value's own newline would start a forged field.
        text = "\n".join(f"{k}={v.replace(chr(10), ' ')}" for k, v in fields.items())
        try:  # a socket per message, as libsystemd does: a few messages a minute
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(1.0)
                sock.sendto(text.encode(), self._address)
        except OSError as error:
            log.warning("sd_notify to %r failed: %s", self._address, error)


def _watchdog_interval(environ: Mapping[str, str]) -> timedelta | None:
    """Half of WATCHDOG_USEC when the watchdog is ours; None when there is none."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if usec <= 0 or (owner and owner != str(os.getpid())):
        return None
    return timedelta(microseconds=usec / 2)
