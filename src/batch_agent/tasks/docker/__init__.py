"""Temporary: replaced by the docker package split."""

from batch_agent.tasks.container import ContainerEngine, ContainerExecution, EngineError

__all__ = ["ContainerEngine", "ContainerExecution", "EngineError"]
