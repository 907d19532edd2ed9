"""Cloud Logging, the agent's side: runnables' output to `batch_task_logs` (or
`batch_agent_logs` for BATCH_INTERNAL tasks) and the agent's own log to `batch_agent_logs`.

Modules: `entries` (the pure rules of an entry), `reader` (bounded reads of output files),
`tasklogs` (one task's destination and durable shipping state), `batch` (what one write takes
and its entries), `body` (their JSON calls), `agentlog` (the logging handler and report
entries), `textformat` (a report in protobuf text form), `writer` (the one writer: its rounds
and what each sends), `sender` (sending a write and committing its offsets). Sits above
`tasks` and `store` (it reads task records and saves them) and below the reporter; talks to
Google only through control's `CloudLogging`.
"""

from batch_agent.cloudlog.agentlog import AgentLog
from batch_agent.cloudlog.tasklogs import Site
from batch_agent.cloudlog.textformat import report_text
from batch_agent.cloudlog.writer import DRAIN_TIMEOUT, CloudLogWriter

__all__ = ["DRAIN_TIMEOUT", "AgentLog", "CloudLogWriter", "Site", "report_text"]
