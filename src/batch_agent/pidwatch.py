"""Process watches by pidfd, for `run`: the agent's parent (`local`'s `--exit-with-parent`)
and, on Python 3.11, asyncio's children (the waiters), so that nothing polls and no thread
waits for each child."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import warnings
from collections.abc import Callable

log = logging.getLogger(__name__)


def watch_parent(gone: Callable[[], None]) -> None:
    """Call `gone` on the event loop once our parent process has ended (at once if it has
    already: we were reparented), by a pidfd: nothing polls."""
    parent = os.getppid()
    try:
        pidfd = os.pidfd_open(parent)
    except ProcessLookupError:  # it has ended already
        gone()
        return
    except OSError as error:  # no pidfd_open (Linux < 5.3, seccomp): run on unwatched
        log.warning("cannot watch the parent process: %s", error)
        return
    if os.getppid() != parent:  # it ended before we looked: this pidfd may be another's
        os.close(pidfd)
        gone()
        return
    loop = asyncio.get_running_loop()

    def ended() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        gone()

    loop.add_reader(pidfd, ended)


def watch_children_by_pidfd() -> None:
    """Python 3.11's asyncio waits for each child process in a thread of its own (64 tasks, 64
    threads); a pidfd watcher waits on the loop instead. 3.12 and later do so by themselves;
    where the kernel has no pidfd_open the default stays."""
    if sys.version_info >= (3, 12):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    # Tasks outlive the agent: their waiters are still being watched when the loop closes.
    warnings.filterwarnings("ignore", "A loop is being detached from a child watcher")
