"""A task's view of its group's barriers: the highest barrier every task has reached.

The server sends `reachedBarrier` with each response; a run waiting at barrier k goes on once
it is >= k, or stops waiting on cancel or when a time limit is reached. Knows nothing of reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


class Barriers:
    def __init__(self) -> None:
        self._reached = 0
        self._moved = asyncio.Event()

    def update(self, reached: int) -> None:
        """What a response says; it only ever moves forward."""
        if reached > self._reached:
            self._reached = reached
            self._moved.set()

    async def wait(self, k: int, *, interrupts: Sequence[asyncio.Event]) -> None:
        """Until barrier `k` is reached or one of `interrupts` is set (a cancel, a limit)."""
        while self._reached < k and not any(i.is_set() for i in interrupts):
            self._moved.clear()
            waits = [asyncio.ensure_future(self._moved.wait())]
            waits += [asyncio.ensure_future(i.wait()) for i in interrupts]
            try:
                await asyncio.wait(waits, return_when="FIRST_COMPLETED")
            finally:
                for w in waits:
                    w.cancel()
