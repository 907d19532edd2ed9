"""Running tasks' output on its way out: one agent-wide shipping tick, a last shipment when a
runnable ends, and the custom status events the lines carry.

`Shipping` is the tick: one timer for the whole agent, however many tasks run. Each tick
looks at the sizes of the followed tasks' output files (a stat each, nothing opened) and ships
only the tasks whose files changed, concurrently, each in a worker thread, each up to the end
of its files as they were. The pause before the next look follows the output: none after a
round that shipped BUSY bytes of a task, QUICK while a task prints at FLOOD_RATE or more (a
fast writer is never left half a second ahead), and otherwise doubling from QUICK up to
SHIP_EVERY, from a task's start (a task that floods from its start is caught in milliseconds)
or the end of a flood.
`LiveOutput` is one task's side: it wraps `TaskOutput` (the blocking reads) with the task's
record: the shipped offsets advance in the record and the tick saves the moved ones beside its
rounds: after each quiet round, at most once per SHIP_EVERY while a task floods (a flood does
not wait for the disk), so a restarted agent goes on where the last one stopped; custom
events are recorded up to MAX_CUSTOM_EVENTS per task, and one more event says how many were
dropped beyond that (a runnable printing 20,000 of them must not grow every report and every
save). One shipment at a time per task: the tick and the final shipments take turns on a lock.
Knows nothing of processes, drivers or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from batch_agent.tasks import events
from batch_agent.tasks.lifecycle import Lifecycle
from batch_agent.tasks.record import RunnableRecord, TaskRecord
from batch_agent.tasks.taskoutput import TaskOutput

log = logging.getLogger(__name__)

SHIP_EVERY = 0.5  # seconds between output shipments while runnables run
QUICK = 0.01  # seconds from following a task to the first look at its files
MAX_CUSTOM_EVENTS = 100  # custom status events recorded per task
BUSY = 1024 * 1024  # bytes shipped of one task in a round that make the next round start at once
FLOOD_RATE = 20e6  # bytes a second of one task that make the next look come after QUICK


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
        self._saved = self._offsets()  # as last saved here (or loaded)

    def pending(self) -> bool:
        """Whether a running runnable's files changed size and no shipment is under way."""
        return not self._turn.locked() and self._output.pending(self._running())

    async def ship(self, *, final: bool, only: int | None = None) -> int:
        """Ship new lines of the running runnables (or of runnable `only`), then record (and
        save at once) the custom events they held; return how many bytes were shipped.
        `final`: also an unterminated last line (the writer ended); files that hold nothing
        beyond the shipped offsets are not read at all. The moved offsets are saved by
        `save_if_moved` or by the task's next save."""
        chosen = self._running() if only is None else {only: self._record.runnables[only]}
        async with self._turn:
            if final and not self._output.pending(chosen, final=True):
                return 0  # nothing written since (a silent runnable): no worker-thread trip
            before = _shipped(chosen)
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
            await self._save()
            self._lifecycle.notify()
        return _shipped(chosen) - before

    def moved(self) -> bool:
        """Whether the record's offsets moved since this object last saved it."""
        return self._offsets() != self._saved

    async def save_if_moved(self) -> None:
        """Persist the record if its offsets moved since this object last saved it."""
        if self.moved():
            await self._save()

    async def _save(self) -> None:
        self._saved = self._offsets()
        await self._lifecycle.persist(self._record)

    def _running(self) -> dict[int, RunnableRecord]:
        """Runnables still running; a finished one was shipped to its end already."""
        return {k: r for k, r in self._record.runnables.items() if r.exit_code is None}

    def _record_custom(self, descriptions: list[str]) -> None:
        record, at = self._record, self._now()
        for description in descriptions:
            record.custom_events += 1
            if record.custom_events <= MAX_CUSTOM_EVENTS:
                record.add_event(description, at=at)
            elif record.custom_events == MAX_CUSTOM_EVENTS + 1:
                record.add_event(events.custom_events_dropped(MAX_CUSTOM_EVENTS), at=at)

    def _offsets(self) -> dict[int, tuple[int, int]]:
        """The runnables' shipped offsets; a runnable that shipped nothing yet is left out, so
        that a runnable added to the record does not count as a move to save."""
        offsets = {k: (r.stdout_offset, r.stderr_offset) for k, r in self._record.runnables.items()}
        return {k: pair for k, pair in offsets.items() if pair != (0, 0)}


def _shipped(runnables: dict[int, RunnableRecord]) -> int:
    """The bytes of these runnables' output shipped so far."""
    return sum(r.stdout_offset + r.stderr_offset for r in runnables.values())


class Shipping:
    """The agent-wide tick over the followed tasks; it runs only while there are some. Must
    be used from one event loop."""

    def __init__(self, every: float = SHIP_EVERY) -> None:
        self._every = every
        self._following: dict[LiveOutput, None] = {}  # insertion-ordered set
        self._tick: asyncio.Task[None] | None = None
        self._pause: asyncio.Future[None] | None = None  # the tick's wait between looks
        self._timer: asyncio.TimerHandle | None = None  # what ends it
        self._quiet = QUICK  # the next wait when nothing floods; doubles up to `every`
        self._saving: asyncio.Task[None] | None = None  # moved offsets being saved

    def follow(self, live: LiveOutput) -> None:
        """Ship `live` on every tick from now on (until `unfollow`), the first one soon."""
        self._following[live] = None
        self._quiet = min(QUICK, self._every)
        if self._tick is None:
            self._tick = asyncio.create_task(self._run())
        elif self._pause is not None and self._timer is not None:
            loop = asyncio.get_running_loop()
            if self._timer.when() > loop.time() + self._quiet:  # the next look, sooner
                self._timer.cancel()
                self._timer = loop.call_later(self._quiet, _settle, self._pause)

    def unfollow(self, live: LiveOutput) -> None:
        """Stop shipping `live` on ticks; a shipment of it under way finishes on its own lock.
        The tick stops with the last task followed."""
        self._following.pop(live, None)
        if not self._following and self._tick is not None:
            self._tick.cancel()
            self._tick = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        saved_at = looked_at = loop.time()
        pause = self._quiet
        while True:
            await self._wait(pause)
            changed = [live for live in self._following if live.pending()]
            results = await asyncio.gather(
                *(live.ship(final=False) for live in changed), return_exceptions=True
            )
            for result in results:
                if isinstance(result, Exception):
                    log.error("output shipment failed", exc_info=result)
            now = loop.time()
            most = max((r for r in results if isinstance(r, int)), default=0)
            flooding = most >= BUSY or (most > 0 and most >= FLOOD_RATE * (now - looked_at))
            pause = self._pause_after(most, now - looked_at)
            looked_at = now
            # A quiet round's offsets are saved at once: the agent's log cannot drop a line
            # shipped twice, so a kill -9 should find little shipped and not saved. A flood's
            # are saved at most once per SHIP_EVERY, so the disk never paces it.
            due = not flooding or now - saved_at >= self._every
            if due and (self._saving is None or self._saving.done()):
                saved_at = now
                if any(live.moved() for live in self._following):
                    self._saving = asyncio.create_task(self._save_moved())

    def _pause_after(self, shipped: int, seconds: float) -> float:
        """The pause before the next look, after a round that shipped at most `shipped` bytes
        of a task over `seconds` since the look before."""
        if shipped >= BUSY:
            self._quiet = min(QUICK, self._every)
            return 0.0
        if shipped and shipped >= FLOOD_RATE * seconds:
            self._quiet = min(QUICK, self._every)
        pause, self._quiet = self._quiet, min(2 * self._quiet, self._every)
        return pause

    async def _save_moved(self) -> None:
        """Persist the followed tasks whose offsets moved since they were last saved."""
        for live in list(self._following):
            try:
                await live.save_if_moved()
            except Exception:
                log.exception("saving output offsets failed")

    async def _wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less if a task is followed meanwhile (`follow`)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        self._pause = pause = loop.create_future()
        self._timer = loop.call_later(seconds, _settle, pause)
        try:
            await pause
        finally:
            self._timer.cancel()
            self._pause = self._timer = None


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
