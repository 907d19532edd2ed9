"""A running (or ended) container: `ContainerExecution`, the `execution.Execution` contract for
containers, made by `ContainerEngine.start` or found again by `ContainerEngine.find`.

Output: each container runs with the `json-file` log driver; two `logs.OutputCopier` threads per
container follow `docker logs` (one for stdout, one for stderr, so the streams stay apart) and
append what arrives to the runnable's files. The end of both streams is also how we learn that
the container stopped (then `inspect` gives the exit code, and a last read without `follow`
picks up what the engine logged after the followers stopped), so no `docker wait` call has to
be kept open. The output paths and the files' sizes at start are kept as container labels, so
an execution found again after an agent restart resumes the copy at the right byte, by
replaying the container's log and skipping what the files already hold; within one agent, a
broken stream resumes after the timestamp of the last entry copied.

This module uses only the public methods of `ContainerEngine`; it must not know about Batch
tasks, and must not block the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_agent.tasks.docker.errors import EngineError
from batch_agent.tasks.docker.logs import OutputCopier
from batch_agent.tasks.execution import EXIT_CODE_UNKNOWN, ExitResult

if TYPE_CHECKING:
    from batch_agent.tasks.docker.engine import ContainerEngine

log = logging.getLogger(__name__)

_ENGINE_LOST = timedelta(minutes=5)  # how long a running container's engine may stay away
_RESUME_PAUSE = timedelta(seconds=1)  # before following again a log stream that broke


class ContainerExecution:
    """A container started by `ContainerEngine.start` or found again by `ContainerEngine.find`.

    Implements `execution.Execution`; `pid` is None (the process is the engine's child).
    """

    def __init__(
        self,
        engine: ContainerEngine,
        container_id: str,
        *,
        name: str,
        outputs: dict[str, tuple[Path | None, int]],
    ) -> None:
        """`outputs`: stream -> (its file, or None to drop it; bytes of it already there)."""
        self._engine = engine
        self.container_id = container_id
        self.name = name
        self._outputs = outputs
        self._copiers: list[OutputCopier] = []
        self._stream_client: Any = None
        self._waiting: asyncio.Future[ExitResult] | None = None
        self._stop_lock = asyncio.Lock()
        self._detached = False

    def __repr__(self) -> str:
        return f"ContainerExecution({self.name!r}, {self.container_id[:12]})"

    @property
    def pid(self) -> None:
        return None

    async def wait(self) -> ExitResult:
        """Wait for the container to end, finish copying its output, remove it; its result.

        Never raises for the container's failure. Safe to call several times and concurrently;
        cancelling one caller cancels nobody else. A container killed by a signal gives
        128+signo (as the engine reports it); one that vanished, or whose engine stays
        unreachable for 5 minutes, gives EXIT_CODE_UNKNOWN with a reason (and is not removed).
        """
        if self._waiting is None:
            self._waiting = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._waiting)

    async def stop(self, grace: timedelta) -> bool:
        """`docker stop`: the image's stop signal (SIGTERM), SIGKILL after `grace` (whole
        seconds, rounded up), then `wait()`. Idempotent; an ended container is fine. An engine
        that cannot be reached is logged, and `wait()` then decides."""
        async with self._stop_lock:
            if self._waiting is None or not self._waiting.done():
                try:
                    await self._engine.stop_container(self.container_id, grace)
                except EngineError as e:
                    log.warning("container %s: %s", self.name, e)
            await self.wait()
            return True

    def follow_output(self) -> None:
        """Start copying output (again, after a broken stream); call on the event loop."""
        if self._stream_client is None:
            self._stream_client = self._engine.log_client()
        if not self._copiers:
            self._copiers = [
                OutputCopier(self._stream_client, self.container_id, stream, path, position)
                for stream, (path, position) in self._outputs.items()
            ]
        for copier in self._copiers:
            copier.start(follow=True)

    def detach(self) -> None:
        """Stop copying output and close our client; the container is left alone. Idempotent."""
        self._detached = True
        for copier in self._copiers:
            copier.cancel()
        if self._stream_client is not None:
            self._stream_client.close()
            self._stream_client = None
        self._engine.forget(self)

    async def _wait(self) -> ExitResult:
        lost_since: float | None = None
        while True:
            for copier in self._copiers:
                await copier.finished()
            if self._detached:
                return ExitResult(EXIT_CODE_UNKNOWN, reason=f"container {self.name}: detached")
            try:
                state = await self._engine.container_state(self.container_id)
            except EngineError as e:
                now = time.monotonic()
                lost_since = lost_since or now
                if now - lost_since > _ENGINE_LOST.total_seconds():
                    self.detach()
                    return ExitResult(EXIT_CODE_UNKNOWN, reason=str(e))
                state = {"Running": True}
            else:
                lost_since = None
                if state is None:
                    self.detach()
                    return ExitResult(EXIT_CODE_UNKNOWN, reason=f"container {self.name} vanished")
            if not state.get("Running") and not state.get("Restarting"):
                break
            # The log streams ended while the container runs: connection lost, engine
            # restarted. Follow again from where the copiers stopped.
            await asyncio.sleep(_RESUME_PAUSE.total_seconds())
            if not self._detached:
                self.follow_output()
        # A follower may stop before the engine has logged the last output (seen with 20.10:
        # the final partial line): read what came after, now that the log is closed.
        for copier in self._copiers:
            copier.start(follow=False)
        for copier in self._copiers:
            await copier.finished()
        result = _result_from_state(self.name, state)
        log.info("container %s: exited %d", self.name, result.exit_code)
        self.detach()
        await self._engine.remove_container(self.container_id)
        return result


def _result_from_state(name: str, state: dict[str, Any]) -> ExitResult:
    """How the container ended, from its `State` in `docker inspect`."""
    if state.get("Status") == "created":
        return ExitResult(EXIT_CODE_UNKNOWN, reason=f"container {name} was never started")
    code = state.get("ExitCode")
    if not isinstance(code, int) or not 0 <= code <= 255:
        return ExitResult(EXIT_CODE_UNKNOWN, reason=f"container {name}: exit code {code!r}")
    result = ExitResult.from_shell_status(code)
    extra = "out of memory (OOMKilled)" if state.get("OOMKilled") else state.get("Error")
    if extra:
        reason = f"{result.reason}: {extra}" if result.reason else str(extra)
        result = ExitResult(result.exit_code, signal=result.signal, reason=reason)
    return result
