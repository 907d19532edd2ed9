"""Opening state.db: its modes, WAL, and a corrupt file set aside.

The database is opened in WAL mode with synchronous=FULL, shared so that `batch-agent status`
can read it while the agent runs, or exclusively when a full disk leaves no room for the WAL
index. A database sqlite cannot read is set aside (`state.db.corrupt-<UTC time>`, with its side
files) and an empty one is started: never a crash loop. The records hold task environments and
registry passwords, so the files are 0600 (the state dir itself is `statedir`'s). Knows nothing
of what the tables hold: the schema is the caller's (`store`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600  # the records hold task environments and registry passwords
_SIDE_FILES = ("-wal", "-shm", "-journal")  # sqlite's companions of a database file


class _Corrupt(Exception):
    """sqlite cannot read the database file; `db` is still open (see `open_database`)."""

    def __init__(self, db: sqlite3.Connection, reason: str) -> None:
        super().__init__(reason)
        self.db = db


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """The database at `path`, made if missing, with `schema` (CREATE ... IF NOT EXISTS) run
    on it; a corrupt one is set aside and replaced. Blocks; other sqlite3 errors propagate."""
    try:
        return _connect_shared_or_exclusive(path, schema)
    except _Corrupt as corrupt:
        # Renamed while sqlite still has it open: closing the connection deletes a -wal.
        aside = _set_aside(path)
        corrupt.db.close()
        log.error(
            "state dir: %s is corrupt (%s); set aside as %s, starting with an empty store",
            path,
            corrupt,
            aside,
        )
    return _connect_shared_or_exclusive(path, schema)


def _connect_shared_or_exclusive(path: Path, schema: str) -> sqlite3.Connection:
    """Normally shared, so that `batch-agent status` and people can read the database while
    the agent runs (one agent per state dir is the lock's business, not sqlite's). On a full
    disk the WAL index (-shm) cannot be made: then an exclusive lock, which keeps the index in
    memory, still lets the agent read its records."""
    try:
        return _connect(path, schema, exclusive=False)
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
            raise
        log.warning("state dir: %s opened exclusively (%s)", path, error)
        return _connect(path, schema, exclusive=True)


def _connect(path: Path, schema: str, *, exclusive: bool) -> sqlite3.Connection:
    for name in (path.name, *(path.name + s for s in _SIDE_FILES)):
        if (path.parent / name).exists():
            os.chmod(path.parent / name, FILE_MODE)
    # Made 0600 from the start (sqlite gives -wal/-shm the database's mode). The umask is the
    # process's: this runs at start-up, before anything else makes files.
    umask = os.umask(0o077)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        if exclusive:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        problems = [str(row[0]) for row in db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise _Corrupt(db, " ".join(" ".join(problems).split())[:300])
        db.executescript(schema)
    except sqlite3.DatabaseError as error:
        if error.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise _Corrupt(db, str(error)) from error
        db.close()
        raise
    finally:
        os.umask(umask)
    return db


def _set_aside(path: Path) -> Path:
    """Rename the database and its side files to `<name>.corrupt-<UTC time>[-wal...]`."""
    aside = path.with_name(f"{path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    for suffix in ("", *_SIDE_FILES):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{aside}{suffix}")
    return aside
