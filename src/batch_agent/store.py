"""TaskStore: durable task records in sqlite (WAL, synchronous=FULL) in the state dir.

Writes go through one worker thread so the event loop never blocks on an fsync and writes keep
their order; `await save(...)` returns only once the record is on disk, which is what lets the
agent persist before it reports. Knows nothing of processes or HTTP.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from batch_agent.tasks.record import TaskRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    raw TEXT NOT NULL,      -- the AgentTask as received: written once
    record TEXT NOT NULL    -- state, events, runnables: rewritten on every change
);
CREATE TABLE IF NOT EXISTS facts (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class TaskStore:
    """Not thread-safe itself: every call runs on its single writer thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._db = self._executor.submit(self._open, path).result()
        self._stored: set[str] = set()  # task ids whose raw spec is on disk already

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return db

    def load_all(self) -> list[TaskRecord]:
        """Every record, oldest first. Blocks: call at start-up, before the loop runs tasks."""
        rows = self._executor.submit(
            lambda: self._db.execute("SELECT raw, record FROM tasks ORDER BY rowid").fetchall()
        ).result()
        records = [TaskRecord.from_json(text, json.loads(raw)) for raw, text in rows]
        self._stored = {r.task_id for r in records}
        return records

    async def save(self, record: TaskRecord) -> None:
        """Insert or update; returns once durable. Cheap: the spec is written only once."""
        text = record.to_json()
        if record.task_id in self._stored:
            await self._run("UPDATE tasks SET record = ? WHERE task_id = ?", (text, record.task_id))
            return
        raw = json.dumps(record.raw)
        await self._run(
            "INSERT INTO tasks (task_id, raw, record) VALUES (?, ?, ?) "
            "ON CONFLICT(task_id) DO UPDATE SET raw = excluded.raw, record = excluded.record",
            (record.task_id, raw, text),
        )
        self._stored.add(record.task_id)

    async def delete(self, task_id: str) -> None:
        await self._run("DELETE FROM tasks WHERE task_id = ?", (task_id,))
        self._stored.discard(task_id)

    def fact(self, key: str) -> str | None:
        """A small durable value (e.g. the boot time seen last). Blocks briefly."""
        row = self._executor.submit(
            lambda: self._db.execute("SELECT value FROM facts WHERE key = ?", (key,)).fetchone()
        ).result()
        return None if row is None else str(row[0])

    async def set_fact(self, key: str, value: str) -> None:
        await self._run(
            "INSERT INTO facts (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def _run(self, sql: str, params: tuple[str, ...]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, lambda: self._db.execute(sql, params))

    def close(self) -> None:
        self._executor.submit(self._db.close).result()
        self._executor.shutdown()
