"""One task's runnable output: from its per-runnable files to the agent's log, in batches.

Reads with OutputShipper from the offsets the task record keeps (so a restarted agent goes on
where the last one stopped), hands each batch to the sink, and picks out the custom status
events (`{"batch/custom/event": ...}` lines) for the runner to record: a batch is searched
once for the key, only if it holds a `{` (a one-byte search; the key's costs as much as the
rest of the batch's way to the log), and only the lines that hold it are decoded. Blocking
file I/O in `ship`: call it from a worker thread. Knows nothing of processes, states or HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from batch_agent.tasks import events
from batch_agent.tasks.output import Lines, OutputShipper
from batch_agent.tasks.record import RunnableRecord

STREAMS = ("stdout", "stderr")
_KEY = events.CUSTOM_EVENT_KEY.encode()

Sink = Callable[[str, str, Lines], None]  # (tag, stream, lines)


def output_path(folder: Path, k: int, stream: str) -> Path:
    """Where runnable `k` (1-based) of a task writes `stream`."""
    return folder / f"runnable-{k}.{stream}"


class TaskOutput:
    """Not thread-safe: one shipment at a time (`pending` may run beside one, not `final`)."""

    def __init__(self, folder: Path, tag: str, sink: Sink) -> None:
        self._folder = folder
        self._tag = tag  # `task 3`, to which ` r2` is added per runnable
        self._sink = sink
        self._shippers: dict[tuple[int, str], OutputShipper] = {}

    def pending(self, runnables: Mapping[int, RunnableRecord], *, final: bool = False) -> bool:
        """Whether any of these runnables' files changed size since shipped: stats only.
        `final`: also a held unterminated last line (reads the shippers: not beside a ship)."""
        return any(
            self._shipper(k, stream, record).pending(final=final)
            for k, record in runnables.items()
            for stream in STREAMS
        )

    def ship(self, runnables: Mapping[int, RunnableRecord], *, final: bool) -> list[str]:
        """Ship what the runnables wrote since the last call, up to the ends of their files;
        advance the records' offsets; return the custom event descriptions found on the way.
        `final` also ships an unterminated last line (the writer has ended)."""
        custom: list[str] = []
        for k, record in runnables.items():
            for stream in STREAMS:
                tag = f"{self._tag} r{k}"

                def deliver(lines: Lines, tag: str = tag, stream: str = stream) -> None:
                    self._sink(tag, stream, lines)
                    if b"{" in lines.data and _KEY in lines.data:
                        custom.extend(_custom_events(lines.data))

                offset = self._shipper(k, stream, record).ship(deliver, final=final)
                setattr(record, f"{stream}_offset", offset)
        return custom

    def _shipper(self, k: int, stream: str, record: RunnableRecord) -> OutputShipper:
        shipper = self._shippers.get((k, stream))
        if shipper is None:
            path = output_path(self._folder, k, stream)
            shipper = OutputShipper(path, offset=getattr(record, f"{stream}_offset"))
            self._shippers[k, stream] = shipper
        return shipper


def _custom_events(data: bytes) -> list[str]:
    """The custom event descriptions of the lines of `data` that hold the key, in order."""
    found: list[str] = []
    at = data.find(_KEY)
    while at >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        end = len(data) if end < 0 else end
        description = events.custom_event(data[start:end].decode("utf-8", errors="replace"))
        if description is not None:
            found.append(description)
        at = data.find(_KEY, end)
    return found
