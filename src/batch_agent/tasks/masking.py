"""Secret masking: every secret value the agent resolved becomes `***` in what it ships or logs.

`mask(text, values)` is the pure rule; `Masker` holds the values this agent resolved (the
Secrets hook adds them, in memory only) and applies the rule to runnables' output lines (the
sink), status event descriptions (the task's lifecycle) and the agent's own log
(`MaskingFilter`, a logging.Filter the reporter installs on the root handlers);
`MaskedEvents` wraps a task's Lifecycle so that events are masked before they are saved. A
multi-line secret is also masked line by line, since output is shipped line by line. Must not
store values anywhere but in memory, nor log them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from batch_agent.tasks.output import Lines
from batch_agent.tasks.taskoutput import Sink

if TYPE_CHECKING:
    from batch_agent.tasks.lifecycle import Lifecycle
    from batch_agent.tasks.record import TaskRecord
    from batch_agent.wire import TaskState

MASK = "***"
_MASK_BYTES = MASK.encode()
MIN_LENGTH = 3  # shorter values (`1`, `on`) would mask every digit and word of the output


def mask(text: str, values: Iterable[str]) -> str:
    """`text` with every occurrence of each value replaced by `***`, longest values first (so a
    value containing another is masked whole)."""
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


class Masker:
    """The secret values to mask; thread-safe (`add` from the event loop, `mask` from the
    shipping threads and any thread that logs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()
        self._encoded: tuple[bytes, ...] = ()  # the same values as UTF-8, for shipped output
        self._resolved: set[str] = set()  # tasks whose values were all added in this process

    def add(self, value: str) -> None:
        """Mask `value` from now on (and each of its lines, for a multi-line value)."""
        parts = {value.strip(), *(line.strip() for line in value.splitlines())}
        fresh = {p for p in parts if len(p) >= MIN_LENGTH} - set(self._values)
        if fresh:
            with self._lock:
                values = tuple(sorted({*self._values, *fresh}, key=len, reverse=True))
                self._values, self._encoded = values, tuple(v.encode() for v in values)

    def resolved(self, task_id: str) -> None:
        """Every secret value of task `task_id` has been added (its Secrets hook ran)."""
        with self._lock:
            self._resolved.add(task_id)

    def knows(self, task_id: str) -> bool:
        """Whether task `task_id`'s values are masked: a shipper of output read after an agent
        restart waits for this before it sends a line of a task that has secrets."""
        return task_id in self._resolved

    def __bool__(self) -> bool:
        """Whether there is anything to mask yet."""
        return bool(self._values)

    def mask(self, text: str) -> str:
        values = self._values  # one immutable snapshot: no lock on the hot path
        if not values:
            return text
        return mask(text, values)

    def mask_bytes(self, data: bytes) -> bytes:
        """`mask` on UTF-8 bytes (shipped output is bytes until it is written)."""
        for encoded in self._encoded:  # longest first, as `mask`
            if encoded in data:
                data = data.replace(encoded, _MASK_BYTES)
        return data

    def sink(self, write: Sink) -> Sink:
        """`write` (a (tag, stream, lines) output sink) with every line masked first. A value
        that a line longer than the shipping limit splits across two pieces is not masked."""

        def masked(tag: str, stream: str, lines: Lines) -> None:
            if self:
                lines = dataclasses.replace(lines, data=self.mask_bytes(lines.data))
            write(tag, stream, lines)

        return masked


class MaskingFilter(logging.Filter):
    """Masks each log record's message (formatted with its arguments); a traceback that holds
    a secret is masked and folded into the message, since formatters format `exc_info` anew."""

    def __init__(self, masker: Masker) -> None:
        super().__init__()
        self._masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._masker:
            return True
        message = record.getMessage()
        masked = self._masker.mask(message)
        if record.exc_info:
            trace = logging.Formatter().formatException(record.exc_info)
            masked_trace = self._masker.mask(trace)
            if masked_trace != trace:
                masked = f"{masked}\n{masked_trace}"
                record.exc_info, record.exc_text = None, None
        if masked != message:
            record.msg, record.args = masked, None
        return True


class MaskedEvents:
    """A task's `Lifecycle` whose status event descriptions are masked before they are saved
    or reported (a runnable's custom event, a failure's cause may quote a secret)."""

    def __init__(self, inner: Lifecycle, masker: Masker) -> None:
        self._inner = inner
        self._masker = masker

    async def transition(
        self,
        record: TaskRecord,
        new: TaskState,
        *,
        exit_code: int | None = None,
        cause: str | None = None,
    ) -> None:
        self._mask(record)
        if cause is not None:
            cause = self._masker.mask(cause)
        await self._inner.transition(record, new, exit_code=exit_code, cause=cause)

    async def persist(self, record: TaskRecord) -> None:
        self._mask(record)
        await self._inner.persist(record)

    def notify(self) -> None:
        self._inner.notify()

    def _mask(self, record: TaskRecord) -> None:
        if self._masker:
            for event in record.events:
                description = event.get("description")
                if isinstance(description, str):
                    event["description"] = self._masker.mask(description)
