"""Serving multi-stage workflows: a placed plan (deployment) executed on worker processes.

    deployment, base_dir = load_deployment(Path("deployment.json"))
    executor = WorkflowExecutor(deployment, base_dir)
    await executor.start()
    result = await executor.infer({"camera": images})   # sinks' outputs by task name
"""

from shoal.runtime.workflow.deployment import (
    SourceSpec,
    StageModel,
    TaskDeployment,
    WorkflowDeployment,
    load_deployment,
    save_deployment,
)
from shoal.runtime.workflow.executor import WorkflowExecutor, WorkflowResult
from shoal.runtime.workflow.routing import SmoothWeightedRoundRobin

__all__ = [
    "SmoothWeightedRoundRobin",
    "SourceSpec",
    "StageModel",
    "TaskDeployment",
    "WorkflowDeployment",
    "WorkflowExecutor",
    "WorkflowResult",
    "load_deployment",
    "save_deployment",
]
