"""Each emulated VM's `instance/preempted` flag and the `wait_for_change` long-poll on it.

Thread-safe: one condition guards the flags, so a blocked metadata request never holds up the
job's state. `wait_for_change` blocks its request thread until the flag changes, the request's
`timeout_sec` (at most a minute) passes or `release()` is called (the emulator stops). Must not
know about HTTP or the job.
"""

from __future__ import annotations

import threading

# How long a `wait_for_change` request may block when it names no (or a longer) timeout_sec.
_WAIT_FOR_CHANGE = 60.0


class Preemption:
    """The preempted flags of `vms` VMs, all False at first."""

    def __init__(self, vms: int) -> None:
        self._changed = threading.Condition()
        self._flags = [False] * vms
        self._released = False

    def set(self, vm: int, value: bool) -> None:
        """Set VM `vm`'s flag and wake its waiting requests."""
        with self._changed:
            self._flags[vm] = value
            self._changed.notify_all()

    def get(self, vm: int) -> bool:
        with self._changed:
            return self._flags[vm]

    def wait_for_change(self, vm: int, last_etag: str | None, timeout_sec: str | None) -> bool:
        """VM `vm`'s flag once it changes, `timeout_sec` passes or `release()` is called; at once
        if `last_etag` (when given) is not the current value's ETag: the caller missed a change."""
        with self._changed:
            initial = self._flags[vm]
            if last_etag is None or last_etag == etag(initial):
                self._changed.wait_for(
                    lambda: self._flags[vm] != initial or self._released, _timeout(timeout_sec)
                )
            return self._flags[vm]

    def release(self) -> None:
        """Answer every waiting request now, and every later one at once (idempotent)."""
        with self._changed:
            self._released = True
            self._changed.notify_all()


def etag(preempted: bool) -> str:
    """The ETag header of an `instance/preempted` answer with this value."""
    return "7c1e5d3a0b9f2e41" if preempted else "2f6b8a0c4d1e9f37"


def _timeout(text: str | None) -> float:
    try:
        return min(float(text), _WAIT_FOR_CHANGE) if text else _WAIT_FOR_CHANGE
    except ValueError:
        return _WAIT_FOR_CHANGE
