"""A running task's output on its way out: a shipping tick while runnables run, a last
shipment when one ends, and the custom status events the lines carry.

Wraps `TaskOutput` (the blocking file reads, run in a worker thread) with the task's record:
the shipped offsets advance in the record and are saved when they moved, so a restarted agent
goes on where the last one stopped; custom events are recorded up to MAX_CUSTOM_EVENTS per
task, and one more event says how many were dropped beyond that (a runnable printing 20,000
of them must not grow every report and every save). One shipment at a time: `TaskOutput` is
not thread-safe, so the tick and the final shipments take turns on a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

from batch_agent.tasks import events
from batch_agent.tasks.lifecycle import Lifecycle
from batch_agent.tasks.record import TaskRecord
from batch_agent.tasks.taskoutput import TaskOutput

SHIP_EVERY = 0.5  # seconds between output shipments while a runnable runs
MAX_CUSTOM_EVENTS = 100  # custom status events recorded per task


class LiveOutput:
    def __init__(
        self,
        record: TaskRecord,
        output: TaskOutput,
        lifecycle: Lifecycle,
        now: Callable[[], datetime],
    ) -> None:
        self._record = record
        self._output = output
        self._lifecycle = lifecycle
        self._now = now
        self._turn = asyncio.Lock()

    async def follow(self) -> None:
        """Ship while runnables run, until cancelled; save the offsets when they moved."""
        shipped = self._offsets()
        while True:
            await asyncio.sleep(SHIP_EVERY)
            await self.ship(final=False)
            offsets = self._offsets()
            if offsets != shipped:
                shipped = offsets
                await self._lifecycle.persist(self._record)

    async def ship(self, *, final: bool, only: int | None = None) -> None:
        """Ship new lines of the running runnables (or of runnable `only`), then record the
        custom events they held. `final`: also an unterminated last line (the writer ended)."""
        runnables = self._record.runnables
        if only is not None:
            chosen = {only: runnables[only]}
        else:  # those still running; a finished one was shipped to its end already
            chosen = {k: r for k, r in runnables.items() if r.exit_code is None}
        async with self._turn:
            # A shipment in a worker thread cannot be interrupted: let it finish even if the
            # caller is cancelled, so that two never overlap.
            shipment = asyncio.ensure_future(
                asyncio.to_thread(self._output.ship, chosen, final=final)
            )
            try:
                custom = await asyncio.shield(shipment)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await shipment
                raise
        if custom:
            self._record_custom(custom)
            await self._lifecycle.persist(self._record)
            self._lifecycle.notify()

    def _record_custom(self, descriptions: list[str]) -> None:
        record, at = self._record, self._now()
        for description in descriptions:
            record.custom_events += 1
            if record.custom_events <= MAX_CUSTOM_EVENTS:
                record.add_event(description, at=at)
            elif record.custom_events == MAX_CUSTOM_EVENTS + 1:
                record.add_event(events.custom_events_dropped(MAX_CUSTOM_EVENTS), at=at)

    def _offsets(self) -> list[tuple[int, int]]:
        return [(r.stdout_offset, r.stderr_offset) for r in self._record.runnables.values()]
