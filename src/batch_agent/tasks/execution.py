"""The contract between a task runner and a started runnable, and the value a runnable ends with.

This module is the process layer's vocabulary only: it starts nothing, knows nothing of Batch,
HTTP, containers or the wire format. Implementations live in `script.py` and `docker/`.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

EXIT_CODE_UNKNOWN = -1
"""`ExitResult.exit_code` when the real exit status could not be learnt (see `reason`)."""
EXIT_CODE_NOT_STARTED = -2
"""`ExitResult.exit_code` when the runnable could not be started at all (see `reason`)."""


@dataclass(frozen=True)
class ExitResult:
    """How a runnable ended, or why it never started.

    `exit_code` is 0..255 for a normal exit and 128+signo for a death by signal (like a shell);
    126/127 when the program could not be executed; `EXIT_CODE_UNKNOWN` when the status was lost;
    `EXIT_CODE_NOT_STARTED` when it never started.
    `signal` is the signal that killed it, when known. `reason` is set when the runnable could
    not start or did not exit normally, in words fit for a log line or a status event.
    """

    exit_code: int
    signal: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True iff the runnable exited 0."""
        return self.exit_code == 0

    @property
    def started(self) -> bool:
        """False when the runnable never started (an image pull failed, say)."""
        return self.exit_code != EXIT_CODE_NOT_STARTED

    @classmethod
    def not_started(cls, reason: str) -> ExitResult:
        """The runnable could not be started, for `reason`; the task layer decides the code."""
        return cls(exit_code=EXIT_CODE_NOT_STARTED, reason=reason)

    @classmethod
    def from_shell_status(cls, status: int) -> ExitResult:
        """The result for a shell-style status (`$?`): values 129..128+NSIG mean a signal death.

        A program that *exits* with such a value is indistinguishable from one killed by that
        signal, as in any shell; `signal` is then set too.
        """
        signo = status - 128
        if 0 < signo < _signal.NSIG:
            return cls(exit_code=status, signal=signo, reason=f"killed by {_signal_name(signo)}")
        return cls(exit_code=status)

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitResult:
        """The result for a `subprocess` return code (negative: killed by that signal)."""
        if returncode < 0:
            signo = -returncode
            return cls(
                exit_code=128 + signo, signal=signo, reason=f"killed by {_signal_name(signo)}"
            )
        return cls(exit_code=returncode)


def _signal_name(signo: int) -> str:
    try:
        return _signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


@dataclass(frozen=True)
class Handle:
    """What must be persisted to find a started runnable again."""

    container: bool = False  # found again by its labels
    pid: int | None = None  # a script's waiter
    start_time: int | None = None  # /proc start time: tells a live pid from a recycled one


class Execution(Protocol):
    """A started runnable."""

    @property
    def pid(self) -> int | None:
        """The process (group) id, or None when the runnable is not a local process."""
        ...

    async def wait(self) -> ExitResult:
        """Wait for the runnable to end and return how it ended; never raises for its failure.

        May be called several times, and concurrently; all callers get the same result.
        """
        ...

    async def stop(self, grace: timedelta) -> bool:
        """SIGTERM the whole process group, SIGKILL it if still alive after `grace`.

        Idempotent; a runnable that already ended is fine. True once the processes are dead;
        False if something outlived SIGKILL (stuck in the kernel): the task cannot be stopped.
        """
        ...
