"""The local control plane: GCE metadata and the Batch `state:report` API on loopback.

For tests and local debugging only; production agents talk to Google. Nothing here imports
agent code (only `batch_agent.discovery`), so the emulator cannot share the agent's mistakes.

Shape: `emulator.Emulator` (the public handle) owns `state.JobState` (the job's memory, with
`dispatch` and `changes`), `batch_api` (`state:report`) and `preemption`, `secrets` (Secret
Manager, Cloud KMS) and `logging` (Cloud Logging's `entries:write`, `Emulator.logs`), and serves
them through `http`, which knows them only as a `backend.Backend`. `job`, `checks`, `service` and
`metadata` are pure rules and data.
"""

from batch_agent.emulator.emulator import Emulator
from batch_agent.emulator.job import JobConfigError, JobPlan, load_job
from batch_agent.emulator.records import Report, TaskView

__all__ = ["Emulator", "JobConfigError", "JobPlan", "Report", "TaskView", "load_job"]
