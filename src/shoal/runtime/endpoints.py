"""The models the frontends serve, by the names clients use: the repository's families and
variants (`InferenceService`) and the served workflows (`WorkflowExecutor`, named by their
deployment), behind one set of calls.

Why one place: HTTP and gRPC must answer a name the same way (metadata, readiness,
configuration, statistics, the overload gate, inference). Workflows used to be served over HTTP
only, their rules written into the HTTP frontend; a `tritonclient.grpc` user, or a tool reading
`/config` or `/stats`, found a served workflow unknown.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shoal.runtime.classification import top_classes
from shoal.runtime.errors import BadRequestError, UnauthorizedError
from shoal.runtime.inference_request import requirements
from shoal.runtime.scheduler import monotonic_ms
from shoal.runtime.service import InferenceService

if TYPE_CHECKING:
    from shoal.runtime.workflow import WorkflowExecutor

__all__ = ["Answer", "ServedModels", "check_admin_authorization", "triton_config"]


def check_admin_authorization(authorization: str | None, admin_token: str | None) -> None:
    """Management calls (load, unload, replicas, register, fault injection) need
    'Authorization: Bearer <token>' when the server has a token, over either protocol (an HTTP
    header, gRPC metadata: tritonclient sends `headers=` as either)."""
    if admin_token is None:
        return
    if not secrets.compare_digest((authorization or "").encode(), f"Bearer {admin_token}".encode()):
        raise UnauthorizedError("this management call needs 'Authorization: Bearer <token>' (the server's --admin-token)")


@dataclass(frozen=True)
class Answer:
    """One inference's outputs by name (batch axis first) and its response `parameters`."""

    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any]


def triton_config(
    name: str, metadata: dict[str, Any], *, max_batch_size: int, max_queue_delay_ms: float, input_format: str,
    preferred_batch_sizes: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Triton's model configuration from KServe v2 metadata: dims leave out the batch dimension,
    as Triton's do when `max_batch_size` > 0. As in Triton, `max_batch_size` is the most items
    one request may carry; the batches the server forms are `preferred_batch_sizes`."""
    dynamic_batching: dict[str, Any] = {"max_queue_delay_microseconds": int(max_queue_delay_ms * 1000)}
    if preferred_batch_sizes:
        dynamic_batching["preferred_batch_size"] = list(preferred_batch_sizes)
    return {
        "name": name,
        "platform": metadata["platform"],
        "backend": "onnxruntime" if metadata["platform"] == "onnxruntime_onnx" else "shoal",
        "max_batch_size": max_batch_size,
        "input": [{"name": tensor["name"], "data_type": "TYPE_FP32", "format": input_format, "dims": tensor["shape"][1:]} for tensor in metadata["inputs"]],
        "output": [{"name": tensor["name"], "data_type": "TYPE_FP32", "dims": tensor["shape"][1:]} for tensor in metadata["outputs"]],
        "dynamic_batching": dynamic_batching,
    }  # fmt: skip


class ServedModels:
    """What a frontend asks about a model name; every unknown name is a 404 (ModelNotFoundError)."""

    def __init__(self, service: InferenceService, workflows: Mapping[str, WorkflowExecutor] | None = None):
        self.service = service
        self.workflows = dict(workflows or {})

    def names(self) -> list[str]:
        return self.service.model_names() + sorted(self.workflows)

    def check(self, model: str, version: str | None = None) -> None:
        """A 404 for an unknown model (named as unknown first) or for a version other than 1."""
        if model not in self.workflows:
            self.service.resolve(model)
        self.service.check_version(model, version)

    def metadata(self, model: str) -> dict[str, Any]:
        if model in self.workflows:
            return self.workflows[model].metadata()
        return self.service.model_metadata(model)

    def config(self, model: str) -> dict[str, Any]:
        """The model's configuration as Triton reports it (`GET /v2/models/{m}/config`, gRPC
        ModelConfig): what `tritonclient`'s `get_model_config` users read the batch limit and
        the tensors from. A variant's or family's batch limit is the items one request may carry
        (`ServeConfig.max_request_items`; a family, model-less, takes the full-size frames it
        resizes), and the largest batches its batchers form (a family: each of its variants') are
        the preferred sizes; a workflow's tensors
        are its sources and sinks, its limits the same two (its stages' batchers form the batches)."""
        workflow = self.workflows.get(model)
        if workflow is not None:
            return triton_config(model, workflow.metadata(), max_batch_size=workflow.max_request_items, max_queue_delay_ms=0.0,
                                 input_format="FORMAT_NONE", preferred_batch_sizes=(workflow.max_batch_size,))  # fmt: skip
        config = self.service.config
        return triton_config(model, self.service.model_metadata(model), max_batch_size=config.max_request_items,
                             max_queue_delay_ms=config.max_queue_delay_ms, input_format="FORMAT_NCHW",
                             preferred_batch_sizes=tuple(self.service.batch_sizes(model)))  # fmt: skip

    def statistics(self, model: str = "") -> list[dict[str, Any]]:
        """Triton's `model_stats` for `model`, or ("") for every variant and workflow served."""
        if not model:
            return self.service.model_statistics("") + [self.workflows[name].statistics.as_json(name) for name in sorted(self.workflows)]
        if model in self.workflows:
            return [self.workflows[model].statistics.as_json(model)]
        return self.service.model_statistics(model)

    def is_ready(self, model: str) -> bool:
        if model in self.workflows:
            return self.workflows[model].ready
        return self.service.is_ready(model)

    def refuse_at_gate(self, model: str) -> bool:
        """`InferenceService.refuse_at_gate`, with a workflow's own SLO for a workflow (whose
        statistics count a refusal as a failure, as a named variant's do)."""
        workflow = self.workflows.get(model)
        if workflow is None:
            return self.service.refuse_at_gate(model)
        refused = self.service.refuse_at_gate(model, workflow_slo_ms=workflow.deployment.slo_ms)
        if refused:
            workflow.statistics.failed(0.0)
        return refused

    async def infer(
        self, model: str, inputs: dict[str, np.ndarray], parameters: dict[str, Any], requested_outputs: list[str], *, received_ms: float,
        classifications: Mapping[str, int] | None = None,
    ) -> Answer:
        """One request that passed the gate (`refuse_at_gate`); `received_ms` is when the frontend
        got it. `classifications`: outputs to answer as their top classes, and how many."""
        workflow = self.workflows.get(model)
        if workflow is None:
            result = await self.service.infer(model, inputs, parameters, requested_outputs, received_ms=received_ms, gated=True)
            answer = Answer({result.output_name: result.outputs}, result.parameters)
            return self._classified(answer, classifications, self.service.resolve(model)[0].class_names) if classifications else answer
        unknown = [name for name in requested_outputs if name not in workflow.sinks]
        if unknown:
            raise BadRequestError(f"output {unknown[0]!r} does not exist; workflow {model!r} has outputs {sorted(workflow.sinks)}")
        stated = requirements(parameters, workflow.deployment.slo_ms)
        statistics = workflow.statistics
        try:
            result = await workflow.infer(inputs, slo_ms=stated.slo_ms, priority=stated.priority, received_ms=received_ms)
        except BadRequestError:  # the client's mistake, not a failure of the workflow
            raise
        except BaseException:  # shed, dropped, a failed stage, or the client went away
            statistics.failed(monotonic_ms() - received_ms)
            raise
        outputs = {name: array for name, array in result.outputs.items() if not requested_outputs or name in requested_outputs}
        items = next(iter(result.outputs.values())).shape[0]
        statistics.answered(items, result.queue_ms, result.compute_ms, monotonic_ms() - received_ms)
        statistics.last_inference_ms = int(time.time() * 1000)
        answer = Answer(outputs, {"shoal_workflow_ms": round(result.latency_ms, 3)})
        return self._classified(answer, classifications, ()) if classifications else answer

    @staticmethod
    def _classified(answer: Answer, classifications: Mapping[str, int], labels: Sequence[str]) -> Answer:
        """`answer` with the outputs named in `classifications` as their top classes."""
        for name, count in classifications.items():
            if name in answer.outputs:
                answer.outputs[name] = top_classes(answer.outputs[name], count, labels)
        return answer
