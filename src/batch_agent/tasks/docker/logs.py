"""A container's output into files: a thread that follows `docker logs` for one stream and
appends what arrives, plus the helper that runs such blocking work in a thread of its own.

Each stream is read from the engine's `json-file` log with timestamps, one log entry (at most
16 KiB) at a time, so memory does not grow with the output. The end of a followed stream is how
the execution learns that the container stopped (or that the connection broke).

This module must not decide what a container's end means, nor block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import docker.errors

from batch_agent.tasks.docker.errors import DockerError

log = logging.getLogger(__name__)

T = TypeVar("T")


class OutputCopier:
    """Appends one output stream of a container to a file, from a thread of its own.

    Each run reads the container's log with timestamps and resumes after the last entry it
    copied: entries older than that timestamp are skipped, and of those with that very
    timestamp the bytes already copied. With no timestamp yet (a new copier), it replays the
    log from the start and skips `position` bytes: what the file already holds of this
    container, after an agent restart. So output is neither repeated nor lost.
    """

    def __init__(
        self,
        client: Any,
        container_id: str,
        stream: str,
        path: Path | None,
        position: int,
    ) -> None:
        """`client`: a docker SDK client without read timeout; `path` None drops the output."""
        self._client = client
        self._container_id = container_id
        self.stream = stream
        self.path = path
        self.position = position  # bytes of this stream now in the file
        self._last_ts: bytes | None = None  # timestamp of the last entry copied
        self._at_last_ts = 0  # bytes copied from entries with that timestamp
        self._lock = threading.Lock()
        self._response: Any = None
        self._stopped = False
        self._done: asyncio.Future[None] | None = None

    def start(self, *, follow: bool) -> None:
        """Start a run in a new thread (the previous one must have finished); on the loop.

        `follow`: until the container stops; else only what the log holds now.
        """
        name = f"logs {self._container_id[:12]} {self.stream}"
        self._done = in_thread_future(lambda: self._copy(follow), name)

    async def finished(self) -> None:
        """Return once the run has ended (container stopped, connection lost, cancelled)."""
        if self._done is not None:
            await asyncio.shield(self._done)

    def cancel(self) -> None:
        """End the copy for good, soon, from any thread; idempotent."""
        with self._lock:
            self._stopped = True
        self._close_response()

    def _close_response(self) -> None:
        with self._lock:
            response, self._response = self._response, None
        if response is not None:
            with contextlib.suppress(OSError, docker.errors.DockerException):
                response.close()

    def _copy(self, follow: bool) -> None:
        """The thread: copy the stream to its end; never raises."""
        resume_ts, resume_skip = self._last_ts, self._at_last_ts
        replay_skip = self.position if resume_ts is None else 0
        fd = None
        try:
            response = self._client.api.logs(
                self._container_id,
                stdout=self.stream == "stdout",
                stderr=self.stream == "stderr",
                stream=True,
                follow=follow,
                timestamps=True,
                since=_whole_seconds(resume_ts) if resume_ts else None,
            )
            with self._lock:
                self._response = response
                if self._stopped:
                    return
            if self.path is not None:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            for frame in response:
                ts, _, chunk = frame.partition(b" ")
                if resume_ts is not None:
                    if ts < resume_ts:
                        continue
                    if ts == resume_ts and resume_skip:
                        dropped = min(resume_skip, len(chunk))
                        chunk, resume_skip = chunk[dropped:], resume_skip - dropped
                if replay_skip:
                    dropped = min(replay_skip, len(chunk))
                    chunk, replay_skip = chunk[dropped:], replay_skip - dropped
                    self._note(ts, dropped)
                if fd is not None and chunk:
                    _write_all(fd, chunk)
                self.position += len(chunk)
                self._note(ts, len(chunk))
        except DockerError as e:
            if not self._stopped:
                cid = self._container_id[:12]
                log.debug("container %s: %s stream ended: %s", cid, self.stream, e)
        except OSError as e:
            log.warning("container %s: cannot write %s: %s", self._container_id[:12], self.path, e)
        finally:
            if fd is not None:
                os.close(fd)
            self._close_response()

    def _note(self, ts: bytes, copied: int) -> None:
        if ts == self._last_ts:
            self._at_last_ts += copied
        elif copied:
            self._last_ts, self._at_last_ts = ts, copied


def in_thread_future(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run blocking `fn` in a new daemon thread; a future of its outcome (call on the loop).

    Not the loop's default executor: these calls last as long as a pull, a stop or a
    container, and would starve it.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as e:
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


async def in_thread(fn: Callable[[], T], name: str) -> T:
    """`in_thread_future(fn, name)`, awaited."""
    return await in_thread_future(fn, name)


def _whole_seconds(ts: bytes) -> int:
    """The whole seconds since the epoch of a log timestamp (`2024-05-01T12:00:00.123456789Z`)."""
    moment = datetime.strptime(ts[:19].decode("ascii"), "%Y-%m-%dT%H:%M:%S")
    return max(1, int(moment.replace(tzinfo=UTC).timestamp()))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
