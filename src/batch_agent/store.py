"""TaskStore: durable task records in sqlite (WAL) in the state dir.

Writes go through one worker thread so the event loop never blocks on the disk and writes keep
their order; `await save(...)` returns only once the record is in the database, which is what
lets the agent persist before it reports. Two strengths of "in": a `durable` save (the
default) is fsynced before it returns (`synchronous=FULL`) and survives a power loss; any other
save is in the WAL file when it returns (`synchronous=NORMAL`, no fsync) and survives a crash
or `kill -9` of the agent, but not of the OS, until the next durable commit or checkpoint
fsyncs it along with everything before it (the WAL is written in order, so what a power loss
keeps is always a prefix of the saves). Which saves must be durable is the caller's reasoning
(`TaskSet`; docs/choices.md, "Durability and restarts"). `save_many` puts several records on
disk in one commit: the tasks of one response are accepted together. Saves asked for while a
commit is under way share the next one (a group commit: 64 tasks starting at once do not
queue for 64 fsyncs), durable if any of them asked for it, each still returning only once its
own record is written. `forget` (a deleted task's record) needs no commit of its own: the
next one takes it along. `settled` waits for every write asked for so far: a state change is
made in memory and its save asked for in one step, and a report built meanwhile must not go
out before the save lands. A write the state dir cannot take
(a full disk, an I/O error) stays pending in memory and is written (all pending writes in one
commit) before the next write, or by a retry every `retry_every`: `save` raises StorageError
so that its caller can decide about the task, `forget` and `set_fact` only log. Opening the
file (its modes, WAL, a corrupt one set aside) is `dbfile`'s. Knows nothing of processes or
HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from batch_agent.dbfile import open_database
from batch_agent.tasks.record import TaskRecord

log = logging.getLogger(__name__)

RETRY_EVERY = timedelta(seconds=5)  # pending writes retried while the state dir refuses them
FORGET_WITHIN = timedelta(seconds=1)  # a deletion waits at most this long for a commit to join

_Write = tuple[str, Callable[[], None]]  # what it writes ("task <id>"), and how

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    raw TEXT NOT NULL,      -- the AgentTask as received: written once
    record TEXT NOT NULL    -- state, events, runnables: rewritten on every change
);
CREATE TABLE IF NOT EXISTS facts (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StorageError(Exception):
    """The state dir did not take a write; str() says why (`no space left in <dir>`)."""

    def __init__(self, reason: str, *, no_space: bool) -> None:
        super().__init__(reason)
        self.no_space = no_space


class TaskStore:
    """Not thread-safe itself: every call runs on its single writer thread, which alone
    touches the connection, `_stored` and `_pending`; `_queued` and `_committing` belong to
    the event loop."""

    def __init__(
        self, path: Path, *, retry_every: timedelta = RETRY_EVERY, wait: bool = True
    ) -> None:
        """Open the database at `path` (made if missing) on the store's thread. Blocks until
        it is open, or with `wait` false returns at once: each call then runs once it is open
        (one made before it waits), and raises the opening's error if it failed. The agent
        opens its store so as it starts, the disk's waits (a new database's fsyncs) passing
        while it imports."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._retry_every = retry_every
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._opening = self._executor.submit(open_database, path, _SCHEMA)
        if wait:
            self._opening.result()
        self._stored: set[str] = set()  # task ids whose raw spec is on disk already
        # Writes the state dir refused, by what they write ("task <id>"), in the order last
        # asked for: a newer write of the same thing replaces an older one.
        self._pending: dict[str, Callable[[], None]] = {}
        self._refusing = False  # the last write failed (for logging the change only)
        self._retrying: asyncio.Task[None] | None = None
        self._synchronous = "FULL"  # what the connection does at a commit (dbfile's default)
        self._pending_durable = False  # a durable write is among `_pending`
        # Writes waiting for the next commit, each caller's with whether it must be durable
        # and the future it awaits.
        self._queued: list[tuple[list[_Write], bool, asyncio.Future[None]]] = []
        self._committing: asyncio.Task[None] | None = None
        self._in_flight: list[tuple[list[_Write], bool, asyncio.Future[None]]] = []  # committing
        # Deletions for the next commit to take along (see `forget`).
        self._forgetting: list[_Write] = []
        self._forget_soon: asyncio.TimerHandle | None = None
        self._forgetting_now: asyncio.Task[None] | None = None

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection: open before any call runs on the store's thread (raises the
        opening's error if it failed)."""
        return self._opening.result()

    def load_all(self) -> list[TaskRecord]:
        """Every record, oldest first. Blocks: call at start-up, before the loop runs tasks."""

        def load() -> list[Any]:
            rows = self._db.execute("SELECT task_id, raw, record FROM tasks ORDER BY rowid")
            found = rows.fetchall()
            self._stored = {task_id for task_id, _, _ in found}
            return found

        rows = self._executor.submit(load).result()
        return [TaskRecord.from_json(text, json.loads(raw)) for _, raw, text in rows]

    async def save(self, record: TaskRecord, *, durable: bool = True) -> None:
        """Insert or update; returns once written (`durable`: fsynced too). Cheap: the spec is
        written only once. Raises StorageError if the state dir refused it: the record is then
        written at the next chance (the next write, or a retry)."""
        await self.save_many([record], durable=durable)

    async def save_many(self, records: Sequence[TaskRecord], *, durable: bool = True) -> None:
        """Save every record in one commit; returns once all are written (`durable`: fsynced
        too). Raises StorageError if the state dir refused them: none is on disk then, all
        are written at the next chance."""
        writes: list[_Write] = [
            # to_json here, on the loop: a record changes only there
            (
                f"task {r.task_id}",
                functools.partial(self._write_record, r.task_id, r.raw, r.to_json()),
            )
            for r in records
        ]
        await self._write(writes, durable=durable)

    def forget(self, task_id: str) -> None:
        """Delete a task's record with the next commit, at the latest FORGET_WITHIN from now
        (or at `close`); not fsynced. Returns at once: a deletion needs no commit of its own
        (a response deletes the tasks that ended while new ones start, whose saves carry it).
        The record may come back after a crash in between, as after a power loss before the
        next fsync: it is reported, and deleted, again. One the state dir refuses is logged
        and done later."""
        self._forgetting.append((f"forget {task_id}", functools.partial(self._delete, task_id)))
        if self._forget_soon is None:
            loop = asyncio.get_running_loop()
            self._forget_soon = loop.call_later(FORGET_WITHIN.total_seconds(), self._forget_now)

    def _forget_now(self) -> None:
        self._forget_soon = None
        if self._forgetting:  # no commit took them along meanwhile
            self._forgetting_now = asyncio.create_task(self._commit_forgotten())

    async def _commit_forgotten(self) -> None:
        try:
            await self._write([], durable=False)  # a commit of nothing else
        except StorageError as error:
            log.warning("state dir: deleted tasks' records not removed yet: %s", error)

    async def settled(self) -> None:
        """Returns once every write asked for before the call is committed (fsynced if it asked
        to be) or refused: what a report about to go out says is on disk by then. A state
        change is made in memory and its save asked for in one step, so a report built from
        memory may hold one whose save is still under way."""
        waiting = [done for _, _, done in (*self._in_flight, *self._queued) if not done.done()]
        if waiting:
            await asyncio.wait(waiting)

    def fact(self, key: str) -> str | None:
        """A small durable value (e.g. the boot time seen last). Blocks briefly."""
        row = self._executor.submit(
            lambda: self._db.execute("SELECT value FROM facts WHERE key = ?", (key,)).fetchone()
        ).result()
        return None if row is None else str(row[0])

    async def set_fact(self, key: str, value: str) -> None:
        """Record a fact. One the state dir refuses is logged and written later."""
        await self._write_later(f"fact {key}", functools.partial(self._write_fact, key, value))

    def close(self) -> None:
        """A last try at what is pending, then close. Blocks."""
        if self._opening.exception() is not None:  # never opened: nothing to write or close
            self._executor.shutdown()
            return
        if self._retrying is not None:
            self._retrying.cancel()
        if self._committing is not None:
            self._committing.cancel()
        if self._forget_soon is not None:
            self._forget_soon.cancel()
        if self._forgetting_now is not None:
            self._forgetting_now.cancel()
        queued = [*self._forgetting, *(write for writes, _, _ in self._queued for write in writes)]
        self._queued, self._forgetting = [], []
        try:
            self._executor.submit(self._queue_and_flush, queued, True).result()
        except StorageError as error:
            log.error("state dir: %d changes lost at exit: %s", len(self._pending), error)
        self._executor.submit(self._db.close).result()
        self._executor.shutdown()

    # -- writes, on the writer thread ---------------------------------------------------------

    async def _write(self, writes: list[_Write], *, durable: bool = True) -> None:
        """Queue `writes` for the next commit and wait for it."""
        done = asyncio.get_running_loop().create_future()
        self._queued.append((writes, durable, done))
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_queued())
        await done

    async def _commit_queued(self) -> None:
        """Commit what is queued, batch after batch, until the queue is empty."""
        loop = asyncio.get_running_loop()
        try:
            while self._queued:
                batches, self._queued = self._queued, []
                self._in_flight = batches
                # Deletions first: a task deleted and then assigned again under the same
                # name (a retry) is inserted anew after its old record is gone.
                writes = [*self._forgetting, *(write for batch, _, _ in batches for write in batch)]
                self._forgetting = []
                durable = any(durable for _, durable, _ in batches)
                failure: Exception | None = None
                try:
                    await loop.run_in_executor(
                        self._executor, self._queue_and_flush, writes, durable
                    )
                except StorageError as error:
                    if self._retrying is None or self._retrying.done():
                        self._retrying = asyncio.create_task(self._retry())
                    failure = error
                except Exception as error:  # a bug: every caller hears of it, none waits forever
                    failure = error
                for _, _, done in batches:
                    if done.done():  # its caller was cancelled
                        continue
                    if failure is None:
                        done.set_result(None)
                    elif isinstance(failure, StorageError):  # one of its own per caller
                        done.set_exception(StorageError(str(failure), no_space=failure.no_space))
                    else:
                        done.set_exception(failure)
        finally:
            self._in_flight = []

    async def _write_later(
        self, key: str, write: Callable[[], None], *, durable: bool = True
    ) -> None:
        try:
            await self._write([(key, write)], durable=durable)
        except StorageError as error:
            log.warning("state dir: %s not written yet: %s", key, error)

    async def _retry(self) -> None:
        """Write what is pending every `retry_every` until it goes through (an idle agent
        has no other write to carry it)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._retry_every.total_seconds())
            try:
                await loop.run_in_executor(self._executor, self._flush)
                return
            except StorageError:
                continue

    def _queue_and_flush(self, writes: list[_Write], durable: bool) -> None:
        for key, write in writes:
            self._pending.pop(key, None)  # the newer write goes last, after what it may depend on
            self._pending[key] = write
        self._flush(durable)

    def _flush(self, durable: bool = True) -> None:
        """Every pending write, oldest first, in one commit (`durable`: fsynced); raises
        StorageError if the state dir refuses it (all stay pending)."""
        count = len(self._pending)
        if not count:
            return
        stored = set(self._stored)  # as it was, should the transaction roll back
        durable = self._pending_durable = durable or self._pending_durable
        try:
            synchronous = "FULL" if durable else "NORMAL"
            if synchronous != self._synchronous:  # only outside a transaction
                self._db.execute(f"PRAGMA synchronous={synchronous}")
                self._synchronous = synchronous
            self._db.execute("BEGIN")
            for write in self._pending.values():
                write()
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as error:
            self._stored = stored
            raise self._refused(error) from error
        except BaseException:
            self._stored = stored
            if self._db.in_transaction:
                self._db.rollback()
            raise
        self._pending.clear()
        self._pending_durable = False
        if self._refusing:
            self._refusing = False
            log.warning("state dir: writable again; %d pending changes written", count)

    def _refused(self, error: sqlite3.OperationalError) -> StorageError:
        if self._db.in_transaction:  # sqlite may leave one open after SQLITE_FULL or IOERR
            self._db.rollback()
        no_space = error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL
        where = self._path.parent
        refused = StorageError(
            f"no space left in {where}" if no_space else f"{error} in {where}", no_space=no_space
        )
        if not self._refusing:
            self._refusing = True
            log.error(
                "state dir: %s; changes kept in memory and retried every %ss",
                refused,
                self._retry_every.total_seconds(),
            )
        return refused

    def _write_record(self, task_id: str, raw: dict[str, Any], text: str) -> None:
        if task_id in self._stored:
            self._db.execute("UPDATE tasks SET record = ? WHERE task_id = ?", (text, task_id))
            return
        self._db.execute(
            "INSERT INTO tasks (task_id, raw, record) VALUES (?, ?, ?) "
            "ON CONFLICT(task_id) DO UPDATE SET raw = excluded.raw, record = excluded.record",
            (task_id, json.dumps(raw), text),
        )
        self._stored.add(task_id)

    def _write_fact(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO facts (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _delete(self, task_id: str) -> None:
        self._db.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))
        self._stored.discard(task_id)
