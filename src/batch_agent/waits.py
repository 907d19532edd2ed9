"""The report loop's waits: each ends early once the agent is told to stop, and pings systemd's
watchdog while it lasts, at least every half WatchdogSec (a loop wedged anywhere else stops
the pings, and systemd restarts the agent). Knows nothing of reports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Literal


class Waits:
    """Waits on the event loop that end at `stop`, calling `ping` at least every `ping_every`
    (None: never) meanwhile."""

    def __init__(
        self, stop: asyncio.Event, *, ping_every: timedelta | None, ping: Callable[[], None]
    ) -> None:
        self._stop = stop
        self._slice = ping_every.total_seconds() if ping_every is not None else float("inf")
        self._ping = ping
        self._stopping: asyncio.Task[Literal[True]] | None = None  # see stopped

    def stopped(self) -> asyncio.Task[Literal[True]]:
        """The task that ends when the agent is told to stop, shared by every wait (one made
        per wait cost the loop more than the report's own step)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop.wait())
        return self._stopping

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        """Sleep, waking early on stop (returns True) or on `wake`."""
        if seconds <= 0 and wake is None:
            return self._stop.is_set()
        woken = asyncio.ensure_future(wake.wait()) if wake is not None else None
        waits = [self.stopped(), *([woken] if woken is not None else [])]
        loop = asyncio.get_running_loop()
        end = loop.time() + max(seconds, 0)
        try:
            while True:
                left = end - loop.time()
                done, _ = await asyncio.wait(
                    waits, timeout=max(min(left, self._slice), 0), return_when="FIRST_COMPLETED"
                )
                if done or left <= self._slice:
                    break
                self._ping()
        finally:
            if woken is not None:
                woken.cancel()
        return self._stop.is_set()

    def close(self) -> None:
        """The loop is ending: no wait is left to end."""
        if self._stopping is not None:
            self._stopping.cancel()
