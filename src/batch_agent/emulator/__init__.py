"""The local control plane: GCE metadata and the Batch `state:report` API on loopback.

For tests and local debugging only; production agents talk to Google. Nothing here imports
agent code (only `batch_agent.discovery`), so the emulator cannot share the agent's mistakes.
"""

from batch_agent.emulator.server import Emulator
from batch_agent.emulator.state import Report

__all__ = ["Emulator", "Report"]
