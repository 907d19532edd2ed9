"""One task's runnable output: from its per-runnable files to the agent's log, in bounded batches.

Reads with OutputShipper from the offsets the task record keeps (so a restarted agent goes on
where the last one stopped), hands each batch of lines to the sink, and picks out the custom
status events (`{"batch/custom/event": ...}` lines) for the runner to record. Blocking file
I/O: call it from a worker thread. Knows nothing of processes, states or HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from batch_agent.tasks import events
from batch_agent.tasks.output import OutputShipper
from batch_agent.tasks.record import RunnableRecord

SHIP_BATCH = 256 * 1024  # bytes read per batch: bounds the agent's memory in a flood
STREAMS = ("stdout", "stderr")

Sink = Callable[[str, str, Sequence[str]], None]  # (tag, stream, lines)


def output_path(folder: Path, k: int, stream: str) -> Path:
    """Where runnable `k` (1-based) of a task writes `stream`."""
    return folder / f"runnable-{k}.{stream}"


class TaskOutput:
    """Not thread-safe: one shipment at a time."""

    def __init__(self, folder: Path, tag: str, sink: Sink) -> None:
        self._folder = folder
        self._tag = tag  # `task 3`, to which ` r2` is added per runnable
        self._sink = sink
        self._shippers: dict[tuple[int, str], tuple[OutputShipper, list[str]]] = {}

    def ship(self, runnables: Mapping[int, RunnableRecord], *, final: bool) -> list[str]:
        """Ship what the runnables wrote since the last call, until caught up; advance the
        records' offsets; return the custom event descriptions found on the way. `final` also
        ships an unterminated last line (the writer has ended)."""
        custom: list[str] = []
        for k, record in runnables.items():
            for stream in STREAMS:
                shipper, lines = self._shipper(k, stream, record)
                while True:
                    before = shipper.offset
                    after = shipper.ship()
                    custom += self._deliver(k, stream, lines)
                    if after - before < SHIP_BATCH:
                        break
                if final:
                    after = shipper.ship(final=True)
                    custom += self._deliver(k, stream, lines)
                setattr(record, f"{stream}_offset", after)
        return custom

    def _deliver(self, k: int, stream: str, lines: list[str]) -> list[str]:
        self._sink(f"{self._tag} r{k}", stream, lines)
        found = [d for d in map(events.custom_event, lines) if d is not None]
        lines.clear()
        return found

    def _shipper(
        self, k: int, stream: str, record: RunnableRecord
    ) -> tuple[OutputShipper, list[str]]:
        if (k, stream) not in self._shippers:
            lines: list[str] = []
            shipper = OutputShipper(
                output_path(self._folder, k, stream),
                emit=lines.append,
                offset=getattr(record, f"{stream}_offset"),
                read_budget=SHIP_BATCH,
            )
            self._shippers[k, stream] = (shipper, lines)
        return self._shippers[k, stream]
