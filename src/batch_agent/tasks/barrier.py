"""A task's view of its group's barriers: the highest barrier every task has reached.

The server sends `reachedBarrier` with each response; a run waiting at barrier k goes on once
it is >= k, or stops waiting on cancel or when its time is up. Knows nothing of reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta


class Barriers:
    def __init__(self) -> None:
        self._reached = 0
        self._moved = asyncio.Event()

    def update(self, reached: int) -> None:
        """What a response says; it only ever moves forward."""
        if reached > self._reached:
            self._reached = reached
            self._moved.set()

    async def wait(
        self, k: int, *, cancelled: asyncio.Event, remaining: Callable[[], timedelta | None]
    ) -> None:
        """Until barrier `k` is reached, `cancelled` is set or `remaining()` is zero."""
        while self._reached < k and not cancelled.is_set():
            left = remaining()
            if left == timedelta(0):
                return
            self._moved.clear()
            waits = [
                asyncio.ensure_future(self._moved.wait()),
                asyncio.ensure_future(cancelled.wait()),
            ]
            timeout = left.total_seconds() if left is not None else None
            try:
                await asyncio.wait(waits, timeout=timeout, return_when="FIRST_COMPLETED")
            finally:
                for w in waits:
                    w.cancel()
