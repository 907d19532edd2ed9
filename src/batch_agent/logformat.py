"""The agent's own log lines on stderr: `text` (escaped, one line per message), `json` (one
object per line, with the task and runnable a line is about) and `journal` (journal.py); and
`HeldRecords`, which keeps what is logged before the agent's Cloud Logging handler exists.

Apart from cli.py so that the commands that log nothing (`version`, `status`) never load the
logging machinery.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from collections import deque
from typing import Any

from batch_agent.journal import ESCAPES, JournalFormatter


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {
            "time": _second(int(record.created)),
            "severity": record.levelname,
            "logger": record.name,
            "message": message,
        }
        entry |= _subject(record, message)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


@functools.lru_cache(maxsize=4)  # the lines of one second share it (strftime: ~3 us a line)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


# Runnables are named `runnables[0]` in log lines (as in the job config); the field is
# 1-based, as `r1` in output lines, `batch-agent logs --runnable` and AgentTaskInfo.runnable.
_RUNNABLE = re.compile(r"\brunnables\[(\d+)\]")


def _subject(record: logging.LogRecord, message: str) -> dict[str, Any]:
    """The task id and runnable a log line is about, as JSON fields: from `extra=` or from the
    subject-first wording (`log.info("task %s: runnables[0] exited 3", task_id)`); `message`
    is the record's."""
    fields: dict[str, Any] = {}
    task = getattr(record, "task", None)
    if task is None and isinstance(record.msg, str) and record.msg.startswith("task %s"):
        task = record.args[0] if isinstance(record.args, tuple) and record.args else None
    if task is not None:
        fields["task"] = str(task)
    runnable = getattr(record, "runnable", None)
    if runnable is None and "runnables[" in message and (found := _RUNNABLE.search(message)):
        runnable = int(found.group(1)) + 1
    if runnable is not None:
        fields["runnable"] = runnable
    return fields


class TextFormatter(logging.Formatter):
    """One line per message, its control characters escaped (a traceback follows as is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(ESCAPES)  # journal.ESCAPES says why
        return super().formatMessage(record)


def setup_logging(log_format: str) -> None:
    """The root logger writes to stderr in `log_format` (text, json or journal), at INFO."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif log_format == "journal":  # journald stamps each line: no timestamp of ours
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("googleapiclient", "google", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class HeldRecords(logging.Handler):
    """The records logged before the agent's Cloud Logging handler (`cloudlog.AgentLog`) is
    in place, handed over to it then: the first report's thread (firstreport.py) logs while the
    rest of the agent is still imported. The newest `LIMIT` are kept. Thread-safe."""

    LIMIT = 1000

    def __init__(self) -> None:
        super().__init__()
        self._records: deque[logging.LogRecord] = deque(maxlen=self.LIMIT)
        logging.getLogger().addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)

    def hand_over(self, handler: logging.Handler | None) -> None:
        """Stop holding; what was held goes to `handler` (None: nowhere), oldest first."""
        logging.getLogger().removeHandler(self)
        self.acquire()
        try:
            held, self._records = list(self._records), deque()
        finally:
            self.release()
        if handler is not None:
            for record in held:
                handler.handle(record)
