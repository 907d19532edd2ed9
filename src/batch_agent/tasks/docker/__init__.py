"""Container runnables on a Docker engine: the only package that imports the docker SDK.

`ContainerEngine` starts, finds and removes containers; a `ContainerExecution` is a started one
(the `execution.Execution` contract); `EngineError` is what an engine's refusal raises. Modules:
`connection` (the SDK client), `engine`, `networks`, `images` (pulls), `create` (create
arguments, labels), `options` (`docker run` options), `execution`, `logs` (output copiers),
`errors` (reading the SDK's errors). It knows nothing of Batch: a runnable that cannot start is
`ExitResult.not_started(reason)`, and the caller decides what that means.
"""

from batch_agent.tasks.docker.engine import ContainerEngine
from batch_agent.tasks.docker.errors import EngineError
from batch_agent.tasks.docker.execution import ContainerExecution

__all__ = ["ContainerEngine", "ContainerExecution", "EngineError"]
