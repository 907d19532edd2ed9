"""The local control plane: GCE metadata and the Batch `state:report` API on loopback.

For tests and local debugging only; production agents talk to Google. Nothing here imports
agent code (only `batch_agent.discovery`), so the emulator cannot share the agent's mistakes.
"""

from batch_agent.emulator.job import JobConfigError, JobPlan, load_job
from batch_agent.emulator.records import Report, TaskView
from batch_agent.emulator.server import Emulator

__all__ = ["Emulator", "JobConfigError", "JobPlan", "Report", "TaskView", "load_job"]
