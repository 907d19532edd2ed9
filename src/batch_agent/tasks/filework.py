"""FileWork: the tasks' small local file operations (task folders, scripts, output files), off
the event loop, every one asked for in one turn of the loop carried by one trip to one thread.

Why not `asyncio.to_thread` each: 64 tasks of one response start in the same turns of the
loop, and each trip costs the loop a future chained across threads and a wake-up, while six
default-executor threads doing a few syscalls each fight the loop for the GIL (each syscall
gives it up, and getting it back from a busy loop can take the 5 ms switch interval). One
trip for the whole batch pays that once (and hands the loop what is done every 2 ms).

Each FileWork has a thread of its own: a file operation never waits behind a Docker call or a
secret's fetch in the default executor, and the task set removes deleted tasks' folders
through a second one, so that new tasks' files never wait behind a big folder. Only for work
on the agent's own local folders: a call that can hang (a `path` script on a network mount,
say) would hold up every call of its batch, and stays on `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_Call = tuple[Callable[[], Any], asyncio.Future[Any]]
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]  # result or error

# How often a trip hands what is done to the loop: the first tasks start while the others'
# files are still being made; each hand-over costs the loop a wake-up.
HAND_OVER_EVERY = 0.002  # seconds


class FileWork:
    def __init__(self) -> None:
        self._thread: ThreadPoolExecutor | None = None  # made with the first call
        self._asked: list[_Call] = []  # calls asked for in this turn of the loop

    async def run(self, call: Callable[[], T]) -> T:
        """`call()`'s result (or exception), from this work's thread."""
        return await self.submit(call)

    def submit(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Queue `call` now, in order with what was queued before it; its future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._asked:
            loop.call_soon(self._send, loop)  # after the rest of this turn has asked too
        self._asked.append((call, future))
        return future

    def close(self) -> None:
        """Let the thread go once its last trip is over (for an agent on its way out)."""
        if self._thread is not None:
            self._thread.shutdown(wait=False)

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._asked = self._asked, []
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="files")
        self._thread.submit(_trip, batch, loop)


def _trip(batch: list[_Call], loop: asyncio.AbstractEventLoop) -> None:
    """Run every call of `batch` in order, handing what is done to the loop every
    `HAND_OVER_EVERY` and at the end: the first of 64 tasks starts while the others' files are
    still being made."""
    done: list[_Outcome] = []
    since = time.monotonic()
    for call, future in batch:
        try:
            done.append((future, call(), None))
        except Exception as error:  # its caller's to handle, as with to_thread
            done.append((future, None, error))
        if time.monotonic() - since >= HAND_OVER_EVERY:
            _hand_over(loop, done)
            done, since = [], time.monotonic()
    if done:
        _hand_over(loop, done)


def _hand_over(loop: asyncio.AbstractEventLoop, done: list[_Outcome]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_settle, done)


def _settle(done: list[_Outcome]) -> None:
    for future, result, error in done:
        if future.done():  # its caller was cancelled
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
