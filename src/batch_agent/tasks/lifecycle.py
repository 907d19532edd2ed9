"""The contract between one task's run and the task set that owns the task's state.

A run (and the output shipping of its runnables) changes the task only through these calls;
`TaskSet` implements them, the in-process tests record them. Knows nothing of HTTP or storage.
"""

from __future__ import annotations

from typing import Protocol

from batch_agent.tasks.record import TaskRecord
from batch_agent.wire import TaskState


class Lifecycle(Protocol):
    async def transition(
        self,
        record: TaskRecord,
        new: TaskState,
        *,
        exit_code: int | None = None,
        cause: str | None = None,
    ) -> None:
        """The only way a task's state changes: edge check, event, persist, report early."""
        ...

    async def persist(self, record: TaskRecord) -> None:
        """Save the record (no state change); returns once it is on disk."""
        ...

    def notify(self) -> None:
        """Something worth reporting happened: report early."""
        ...
