"""`Sender`: the writer's second half, sending one write and committing it.

Given a `Write` (the segments of each task and the JSON bodies of its `entries.write` calls),
it saves the segments in the task records (`pending`) before sending, so that a resend after a
crash is the same; makes the calls in order in the writer's thread; and on success moves the
offsets past the segments and saves again (a write that filled its request leaves that save to
the next one, which follows at once). A segment sent again (the answer was lost, the agent was
killed) carries the same insertIds and timestamps (see `entries`), so Cloud Logging keeps each
line once.

Failures: a retryable one backs off (capped, jittered, at least Retry-After); the backlog
stays in the files, never in memory. 403 (the API disabled, no `logging.logEntries.create`)
adds one warning event to each task whose lines it refused (once per task) and is retried
like the rest: it never fails a task. 400 (entries the API refuses for good) is logged and
those lines are skipped, the other calls of the write being made (partialSuccess within each).
Knows nothing of files or of which tasks to ship: the writer picks, this sends.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from batch_agent.cloudlog.batch import Write
from batch_agent.cloudlog.tasklogs import TaskLog
from batch_agent.control import Backoff, ControlPlaneError
from batch_agent.store import StorageError
from batch_agent.tasks import events
from batch_agent.tasks.record import TaskRecord

log = logging.getLogger(__name__)


class LogClient(Protocol):
    def write(self, body: bytes) -> None: ...  # blocks; raises ControlPlaneError

    def abort(self) -> None: ...


class Sender:
    """Sends the writes the writer prepared, one at a time, and commits their offsets. Runs
    on the event loop; `in_thread` runs a blocking call in the writer's own thread."""

    def __init__(
        self,
        client: LogClient,
        *,
        in_thread: Callable[[Callable[[], None]], Awaitable[None]],
        save: Callable[[Sequence[TaskRecord]], Awaitable[None]],
        still_ours: Callable[[list[TaskRecord]], list[TaskRecord]],
        on_change: Callable[[], None],
    ) -> None:
        self._client = client
        self._in_thread = in_thread
        self._save_many = save
        self._still_ours = still_ours
        self._on_change = on_change
        self._backoff = Backoff()
        self.delay = timedelta(seconds=1)  # how long to wait after a failed write
        self._unsaved: dict[TaskLog, None] = {}  # written, offsets not saved yet (in order)
        self._denied = False  # the last write was refused with 403 (logged once per streak)

    async def send(self, write: Write) -> bool:
        """Save `write`'s segments as pending, make its calls, commit: True when its entries
        are written (or refused for good: 400), False when it failed and is to be tried again
        after `delay` (its segments stay pending: the next write of those tasks is the same)."""
        touched = list(write.segments)
        for task_log, segments in write.segments.items():
            task_log.set_pending(segments)
        # Before sending: a resend after a crash is the same. With it go the offsets moved by
        # the last write, if that one was not saved on its own (see below).
        await self._save([*touched, *(t for t in self._unsaved if t not in write.segments)])
        self._unsaved.clear()
        try:
            await self._in_thread(functools.partial(self._make_calls, write.bodies))
        except ControlPlaneError as error:
            if error.status != 400:
                await self._failed(error, touched)
                return False
            log.error("cloud logging refused entries for good (skipped): %s", error)
        if self._denied:
            log.info("cloud logging: writing again")
        self._denied = False
        self._backoff.reset()
        for task_log, segments in write.segments.items():
            task_log.written(segments)
        if write.full:
            # More at once: the next round's save carries these offsets. A crash before it
            # sends the pending segments on disk again, which Cloud Logging deduplicates.
            self._unsaved.update(dict.fromkeys(touched))
        else:
            await self._save(touched)
        return True

    async def save_unsaved(self) -> None:
        """Save the offsets a full write left to the next one (there is none to carry them)."""
        if self._unsaved:
            unsaved, self._unsaved = list(self._unsaved), {}
            await self._save(unsaved)

    def back_off(self) -> None:
        """A round failed before it could send (a bug of ours): wait longer before the next."""
        self.delay = self._backoff.next_delay()

    def _make_calls(self, calls: list[bytes]) -> None:
        """Make these `entries.write` calls, in order: in a worker thread. A 400 refuses one
        call's entries for good: the others are still sent."""
        refused: ControlPlaneError | None = None
        for body in calls:
            try:
                self._client.write(body)
            except ControlPlaneError as error:
                if error.status != 400:
                    raise
                refused = error
        if refused is not None:
            raise refused

    async def _failed(self, error: ControlPlaneError, touched: list[TaskLog]) -> None:
        self.delay = max(self._backoff.next_delay(), error.retry_after or timedelta(0))
        if error.status != 403:
            log.warning(
                "cloud logging write failed (%s); retrying in %.1fs",
                error,
                self.delay.total_seconds(),
            )
            return
        if not self._denied:
            log.warning("cloud logging denied the agent's writes: %s", error)
        self._denied = True
        warned = [t for t in touched if not t.state.get("denied")]
        at = datetime.now(UTC)
        for task_log in warned:
            task_log.state["denied"] = True
            task_log.record.add_event(events.cloud_logging_denied(str(error)), at=at)
        if warned:
            await self._save(warned)
            self._on_change()

    async def _save(self, task_logs: list[TaskLog]) -> None:
        """Save the records of these tasks that are still the agent's (a deleted task's record
        must not come back)."""
        records = self._still_ours([t.record for t in task_logs])
        if not records:
            return
        try:
            await self._save_many(records)
        except StorageError as error:
            log.warning("cloud logging offsets not saved yet: %s", error)
