"""TaskStore: records survive closing and reopening the database, as after a crash; the state
dir is private, locked, and survives a full disk and a corrupt database."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batch_agent.store import FORGET_WITHIN, StorageError, TaskStore
from batch_agent.tasks.record import RunnableRecord, TaskRecord
from batch_agent.wire import TaskState
from tests.helpers import fill, tmpfs


def test_records_survive_reopen_and_delete(tmp_path):
    """What was saved is loaded again, in order, with its events and runnables; deletes stick."""
    path = tmp_path / "state.db"

    async def write() -> None:
        store = TaskStore(path)
        first = TaskRecord(task_id="a", raw={"task": "a"})
        first.transition(TaskState.RUNNING, at=datetime.now(UTC), where="zones/z/instances/1")
        first.runnables[1] = RunnableRecord(pid=42, start_time=7, stdout_offset=10)
        await store.save(first)
        await store.save(TaskRecord(task_id="b", raw={"task": "b"}))
        await store.save(TaskRecord(task_id="c", raw={"task": "c"}))
        store.forget("b")  # the next commit takes it along
        await store.set_fact("boot_time", "x")
        store.close()

    asyncio.run(write())
    store = TaskStore(path)
    try:
        records = store.load_all()
        assert [r.task_id for r in records] == ["a", "c"]
        assert records[0].state is TaskState.RUNNING
        assert records[0].started_at is not None
        assert records[0].runnables[1] == RunnableRecord(pid=42, start_time=7, stdout_offset=10)
        assert "ASSIGNED to RUNNING" in records[0].events[0]["description"]
        assert store.fact("boot_time") == "x"
        assert store.fact("missing") is None
    finally:
        store.close()


def _commits(wal: Path) -> int:
    """How many commits the WAL file holds: frames of the current salt with a database size."""
    data = wal.read_bytes()
    page_size = int.from_bytes(data[8:12], "big")
    salt = data[16:24]
    count, offset = 0, 32
    while offset + 24 + page_size <= len(data) and data[offset + 8 : offset + 16] == salt:
        count += int.from_bytes(data[offset + 4 : offset + 8], "big") != 0
        offset += 24 + page_size
    return count


def test_save_many_is_one_commit(tmp_path):
    """Records given to save_many reach the disk in a single commit (one fsync), with their
    specs; a later save of one of them only updates it."""
    path = tmp_path / "state.db"

    async def write() -> None:
        store = TaskStore(path)
        before = _commits(Path(f"{path}-wal"))
        await store.save_many([TaskRecord(task_id=i, raw={"task": i}) for i in "abcd"])
        assert _commits(Path(f"{path}-wal")) == before + 1
        record = TaskRecord(task_id="c", raw={"task": "ignored"})
        record.transition(TaskState.RUNNING, at=datetime.now(UTC), where="zones/z/instances/1")
        await store.save(record)
        assert _commits(Path(f"{path}-wal")) == before + 2
        store.close()

    asyncio.run(write())
    store = TaskStore(path)
    try:
        records = {r.task_id: r for r in store.load_all()}
        assert sorted(records) == ["a", "b", "c", "d"]
        assert records["c"].state is TaskState.RUNNING
        assert records["c"].raw == {"task": "c"}  # the spec is written once
    finally:
        store.close()


def test_saves_asked_for_together_share_one_commit(tmp_path):
    """Saves that queue while none is being committed go to disk in one commit (a group
    commit), and each returns only once its record is there."""
    path = tmp_path / "state.db"

    async def write() -> None:
        store = TaskStore(path)
        before = _commits(Path(f"{path}-wal"))
        records = [TaskRecord(task_id=f"t{i}", raw={}) for i in range(20)]
        await asyncio.gather(*(store.save(r) for r in records))
        assert _commits(Path(f"{path}-wal")) == before + 1
        store.close()

    asyncio.run(write())
    store = TaskStore(path)
    try:
        assert [r.task_id for r in store.load_all()] == [f"t{i}" for i in range(20)]
    finally:
        store.close()


def test_settled_returns_once_every_save_asked_for_is_on_disk(tmp_path):
    """settled (what a report awaits): the saves asked for before it, in flight or queued, are
    in the database when it returns; with none, it returns at once."""
    path = tmp_path / "state.db"

    def on_disk() -> list[str]:
        with sqlite3.connect(path) as other:  # another connection: what a crash would leave
            return [row[0] for row in other.execute("SELECT task_id FROM tasks ORDER BY rowid")]

    async def write() -> None:
        store = TaskStore(path)
        try:
            await store.settled()  # nothing asked for
            first = asyncio.ensure_future(store.save(TaskRecord(task_id="a", raw={})))
            await asyncio.sleep(0)  # its commit under way
            second = asyncio.ensure_future(store.save(TaskRecord(task_id="b", raw={})))
            await asyncio.sleep(0)  # queued behind it
            await store.settled()
            assert on_disk() == ["a", "b"]
            await asyncio.gather(first, second)
        finally:
            store.close()

    asyncio.run(write())


def test_a_forgotten_record_goes_with_the_next_commit_or_within_a_second(tmp_path):
    """forget: the next commit takes the deletion along (none of its own), before that
    commit's saves, so that a task assigned again under the same name (a retry) is stored
    anew, its spec too; with no other write, the deletion is committed within FORGET_WITHIN."""
    path = tmp_path / "state.db"

    def on_disk() -> dict[str, str]:
        with sqlite3.connect(path) as other:
            return dict(other.execute("SELECT task_id, raw FROM tasks").fetchall())

    async def write() -> None:
        store = TaskStore(path)
        try:
            await store.save(TaskRecord(task_id="a", raw={"attempt": 1}))
            await store.save(TaskRecord(task_id="b", raw={}))
            before = _commits(Path(f"{path}-wal"))
            store.forget("a")
            await store.save(TaskRecord(task_id="a", raw={"attempt": 2}))
            assert _commits(Path(f"{path}-wal")) == before + 1
            assert on_disk() == {"a": '{"attempt": 2}', "b": "{}"}
            store.forget("b")
            began = time.monotonic()
            while "b" in on_disk():
                assert time.monotonic() - began < FORGET_WITHIN.total_seconds() + 5
                await asyncio.sleep(0.05)
        finally:
            store.close()

    asyncio.run(write())


_SAVE_THEN_DIE = """
import asyncio, contextlib, os, signal, sys
from pathlib import Path
from batch_agent.store import TaskStore
from batch_agent.tasks.record import TaskRecord

async def main():
    store = TaskStore(Path(sys.argv[1]))
    for i, durable in enumerate((True, False, False, True, False)):
        with contextlib.suppress(FileNotFoundError):  # a marker in the trace
            os.chdir(f"/nonexistent/{'durable' if durable else 'not-durable'}-save")
        await store.save(TaskRecord(task_id=f"t{i}", raw={}), durable=durable)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint: a crash

asyncio.run(main())
"""


def test_only_durable_saves_are_fsynced_and_all_survive_kill_9(tmp_path):
    """A durable save fsyncs before it returns and a non-durable one does not; both are in the
    database for the next agent after the writer is killed with SIGKILL."""
    path = tmp_path / "state.db"
    argv = [sys.executable, "-c", _SAVE_THEN_DIE, str(path)]
    strace = shutil.which("strace")
    trace = tmp_path / "trace"
    if strace is not None:
        argv = [strace, "-f", "-qq", "-e", "trace=fsync,fdatasync,chdir", "-o", str(trace), *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode in (-9, 128 + 9), done.stderr
    store = TaskStore(path)
    try:
        assert [r.task_id for r in store.load_all()] == ["t0", "t1", "t2", "t3", "t4"]
    finally:
        store.close()
    if strace is None:
        pytest.skip("no strace: the fsyncs were not counted")
    syncs = {"durable": 0, "not-durable": 0}
    marker = None
    for line in trace.read_text().splitlines():
        if "chdir(" in line:
            marker = line.split('"')[1].rsplit("/", 1)[1].removesuffix("-save")
        elif marker is not None and ("fsync(" in line or "fdatasync(" in line):
            syncs[marker] += 1
    assert syncs["not-durable"] == 0, syncs
    assert syncs["durable"] >= 2, syncs  # the WAL, at each of the two durable saves


def test_a_terminal_record_cannot_change_state():
    """transition() refuses to leave SUCCEEDED/FAILED: terminal means terminal."""
    record = TaskRecord(task_id="a", raw={})
    now = datetime.now(UTC)
    record.transition(TaskState.FAILED, at=now, where="w", exit_code=3)
    try:
        record.transition(TaskState.RUNNING, at=now, where="w")
    except ValueError as error:
        assert "FAILED" in str(error)
    else:
        raise AssertionError("a FAILED task became RUNNING")
    assert record.exit_code == 3
    assert record.events[-1]["taskExecution"] == {"exitCode": 3}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    with tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


def test_database_files_are_private(tmp_path):
    """An older 0644 database becomes 0600, its -wal is 0600 and a new database is made so."""
    sqlite3.connect(tmp_path / "old.db").close()
    (tmp_path / "old.db").chmod(0o644)
    old = TaskStore(tmp_path / "old.db")
    fresh = TaskStore(tmp_path / "fresh" / "state.db")
    try:
        asyncio.run(old.save(TaskRecord(task_id="a", raw={"env": "secret"})))
        for path in (tmp_path / "old.db", tmp_path / "old.db-wal", tmp_path / "fresh/state.db"):
            assert mode(path) == 0o600, path
    finally:
        old.close()
        fresh.close()


def damaged_page(path: Path) -> bytes:
    """A real database with tasks, one page of which is overwritten."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE tasks (task_id TEXT PRIMARY KEY, raw TEXT, record TEXT)")
    db.executemany("INSERT INTO tasks VALUES (?, '{}', '{}')", [(str(i),) for i in range(300)])
    db.commit()
    db.close()
    data = bytearray(path.read_bytes())
    data[2 * 4096 + 100 : 2 * 4096 + 400] = b"\xff" * 300
    return bytes(data)


@pytest.mark.parametrize("damage", ["garbage", "damaged page"])
def test_a_corrupt_database_is_set_aside_and_replaced(tmp_path, caplog, damage):
    """A database sqlite cannot read (not a database, or failing its quick check) is renamed
    state.db.corrupt-<time> with its -wal, logged, and an empty store starts in its place."""
    path = tmp_path / "state.db"
    content = b"garbage" * 1000 if damage == "garbage" else damaged_page(path)
    path.write_bytes(content)
    (tmp_path / "state.db-wal").write_bytes(b"wal")
    store = TaskStore(path)
    try:
        assert store.load_all() == []
        asyncio.run(store.save(TaskRecord(task_id="a", raw={})))
    finally:
        store.close()
    [aside] = tmp_path.glob("state.db.corrupt-*[0-9]Z")
    assert aside.read_bytes() == content
    assert Path(f"{aside}-wal").read_bytes() == b"wal"
    assert f"set aside as {aside}" in caplog.text
    assert [r.levelname for r in caplog.records if "corrupt" in r.message] == ["ERROR"]


def test_refused_writes_are_kept_and_written_when_space_returns(small_disk):
    """On a full disk save raises StorageError (no space), delete and set_fact do not; the
    database can still be opened and read; once there is space the retry writes it all."""
    path = small_disk / "state.db"

    async def scenario() -> None:
        store = TaskStore(path)
        await store.save(TaskRecord(task_id="kept", raw={}))
        await store.save(TaskRecord(task_id="gone", raw={}))
        store.close()
        filler = fill(small_disk)
        store = TaskStore(path, retry_every=timedelta(seconds=0.05))  # as a restart on it
        assert [r.task_id for r in store.load_all()] == ["kept", "gone"]
        record = TaskRecord(task_id="new", raw={"x": "y" * 10000})
        with pytest.raises(StorageError, match=f"no space left in {small_disk}") as refused:
            await store.save(record)
        assert refused.value.no_space
        record.transition(TaskState.FAILED, at=datetime.now(UTC), where="w", exit_code=50000)
        with pytest.raises(StorageError):
            await store.save(record)
        store.forget("gone")
        await store.set_fact("boot_time", "b")
        filler.unlink()
        for _ in range(200):  # no other write: the retry alone must carry them
            await asyncio.sleep(0.05)
            if store.fact("boot_time") == "b":
                break
        store.close()

    asyncio.run(scenario())
    store = TaskStore(path)
    try:
        records = {r.task_id: r for r in store.load_all()}
        assert sorted(records) == ["kept", "new"]
        assert records["new"].state is TaskState.FAILED
        assert records["new"].raw == {"x": "y" * 10000}
        assert store.fact("boot_time") == "b"
    finally:
        store.close()
