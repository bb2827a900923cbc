"""KServe v2 / Open Inference Protocol over gRPC (grpc.aio), served on the same event loop.

Tensors arrive in `raw_input_contents` (what tritonclient sends), in typed `contents` or in a
registered shared-memory region; all become numpy arrays checked by the same rules as HTTP
(`shoal.runtime.grpc_tensors`), and answers go back in `raw_output_contents` or their regions. ServingErrors map to their gRPC status codes, with `retry-after` in the
trailing metadata for RESOURCE_EXHAUSTED.

`ModelStreamInfer` (Triton's bidirectional stream, `tritonclient.grpc`'s `start_stream` and
`async_stream_infer`) serves the requests of a stream concurrently, as they arrive, and answers
each in the order they finish (the client matches them by `id`); a request that fails is
answered with its `error_message` (which names the request's id), and the stream goes on.

The generated messages live in the default protobuf pool under the protocol's own names
(`inference.*`), as every KServe server's do; a process that also imports another copy of
those messages (tritonclient.grpc) cannot import this module. The server runs in its own
process, so this only matters to code that embeds the server next to such a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

import grpc

from shoal.core.errors import InvalidInputError
from shoal.runtime.codec import check_output_parameters
from shoal.runtime.endpoints import ServedModels, check_admin_authorization
from shoal.runtime.errors import OverloadedError, RequirementsUnmetError, ServingError
from shoal.runtime.grpc_tensors import decode_grpc_inputs, encode_grpc_outputs, parameter_value, peer_host, set_parameter
from shoal.runtime.proto import grpc_service_pb2 as pb
from shoal.runtime.proto import grpc_service_pb2_grpc as pb_grpc
from shoal.runtime.scheduler import monotonic_ms
from shoal.runtime.service import GATE_REFUSAL_MESSAGE, InferenceService
from shoal.runtime.shared_memory import check_same_host
from shoal.runtime.sockets import host_in_url

if TYPE_CHECKING:
    from shoal.runtime.workflow import WorkflowExecutor

__all__ = ["bind_grpc_server"]

logger = logging.getLogger(__name__)
STREAM_MAX_PENDING = 128
"""Requests of one ModelStreamInfer stream read and not yet answered to gRPC; past it, the
stream's next requests are not read until the client takes answers (flow control then holds
the client)."""

class _Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService, models: ServedModels, admin_token: str | None = None):
        self.service = service
        self.models = models
        self.admin_token = admin_token

    def _check_admin(self, context: grpc.aio.ServicerContext) -> None:
        metadata = {key.lower(): value for key, value in (context.invocation_metadata() or ())}
        check_admin_authorization(metadata.get("authorization"), self.admin_token)

    async def _guard(self, context: grpc.aio.ServicerContext, call):
        try:
            return await call()
        except ServingError as error:
            if isinstance(error, OverloadedError):
                context.set_trailing_metadata((("retry-after", str(error.retry_after_whole_s)),))
            if isinstance(error, RequirementsUnmetError):
                # gRPC statuses carry one string: the alternatives travel as JSON in trailing metadata.
                context.set_trailing_metadata((("shoal-alternatives", json.dumps(error.alternatives)),))
            await context.abort(getattr(grpc.StatusCode, error.grpc_code), error.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            logger.exception("unexpected error in a gRPC call")
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.service.is_ready())

    async def ModelReady(self, request, context):
        async def call():
            # As Triton: a version that does not exist is not ready (not an error).
            return pb.ModelReadyResponse(ready=request.version in ("", "1") and self.models.is_ready(request.name))

        return await self._guard(context, call)

    async def ServerMetadata(self, request, context):
        metadata = self.service.server_metadata()
        return pb.ServerMetadataResponse(name=metadata["name"], version=metadata["version"], extensions=metadata["extensions"])

    async def ModelMetadata(self, request, context):
        async def call():
            self.models.check(request.name, request.version)
            metadata = self.models.metadata(request.name)
            tensors = lambda items: [pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in items]  # noqa: E731
            return pb.ModelMetadataResponse(
                name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"], inputs=tensors(metadata["inputs"]), outputs=tensors(metadata["outputs"])
            )

        return await self._guard(context, call)

    async def _infer(self, request: pb.ModelInferRequest, received_ms: float) -> pb.ModelInferResponse:
        """One inference, for ModelInfer and each request of a stream; raises ServingError."""
        self.models.check(request.model_name, request.model_version)
        if self.models.refuse_at_gate(request.model_name):
            raise OverloadedError(GATE_REFUSAL_MESSAGE)
        shared_memory = self.service.shared_memory
        inputs = decode_grpc_inputs(request, shared_memory)
        parameters = {key: parameter_value(value) for key, value in request.parameters.items()}
        classifications, regions = {}, {}
        for output in request.outputs:
            values = {key: parameter_value(value) for key, value in output.parameters.items()}
            count, region = check_output_parameters(values, f"output {output.name!r}", shared_memory)
            if count is not None:
                classifications[output.name] = count
            if region is not None:
                regions[output.name] = region
        requested = [output.name for output in request.outputs]
        answer = await self.models.infer(request.model_name, inputs, parameters, requested, received_ms=received_ms, classifications=classifications)
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        encode_grpc_outputs(response, answer.outputs, regions, shared_memory)
        for key, value in answer.parameters.items():
            set_parameter(response.parameters[key], value)
        return response

    async def ModelInfer(self, request, context):
        received_ms = monotonic_ms()
        return await self._guard(context, lambda: self._infer(request, received_ms))

    async def _stream_answer(self, request: pb.ModelInferRequest, received_ms: float) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request, received_ms))
        except ServingError as error:
            message = error.message
            if isinstance(error, OverloadedError):
                message += f" (retry after {error.retry_after_whole_s} s)"
            if isinstance(error, RequirementsUnmetError):
                message += f"; alternatives: {json.dumps(error.alternatives)}"
        except Exception:
            logger.exception("unexpected error in a gRPC stream request")
            message = "internal server error"
        # tritonclient hands its callback only the message of a failed answer: the id goes in it
        # too, so that the client can tell which request failed (and in the response, for others).
        if request.id:
            message = f"request {request.id!r}: {message}"
        return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id))

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        answers: asyncio.Queue[pb.ModelStreamInferResponse] = asyncio.Queue()
        in_flight: set[asyncio.Task] = set()
        # A request holds a slot from when it is read until its answer is handed to gRPC: a
        # client that sends without reading stops being read once STREAM_MAX_PENDING answers
        # wait for it (they used to pile up without bound: 3 GB in 9 s in a review's test).
        slots = asyncio.Semaphore(STREAM_MAX_PENDING)

        def answer(task: asyncio.Task) -> None:
            in_flight.discard(task)
            if task.cancelled():
                slots.release()
            else:
                answers.put_nowait(task.result())

        async def read_requests() -> None:
            requests = request_iterator.__aiter__()
            while True:
                await slots.acquire()
                try:
                    request = await requests.__anext__()
                except StopAsyncIteration:
                    return
                task = asyncio.create_task(self._stream_answer(request, monotonic_ms()))
                in_flight.add(task)
                task.add_done_callback(answer)

        reader = asyncio.create_task(read_requests())
        next_answer: asyncio.Future | None = None
        try:
            # Until the client has closed its side and every request it sent is answered.
            while True:
                while not answers.empty():
                    yield answers.get_nowait()
                    slots.release()
                if reader.done() and not in_flight:
                    break
                next_answer = asyncio.ensure_future(answers.get())
                await asyncio.wait({next_answer} if reader.done() else {next_answer, reader}, return_when=asyncio.FIRST_COMPLETED)
                if next_answer.done():
                    yield next_answer.result()
                    slots.release()
                else:  # the reader ended: look again whether anything is still in flight
                    next_answer.cancel()
            reader.result()  # a broken request stream ends the call with its error
        finally:  # the client went away (or the server stops): nothing is left running for it
            reader.cancel()
            if next_answer is not None:
                next_answer.cancel()
            for task in list(in_flight):
                task.cancel()

    async def ModelConfig(self, request, context):
        async def call():
            self.models.check(request.name, request.version)
            config = self.models.config(request.name)
            return pb.ModelConfigResponse(config=pb.ModelConfig(
                name=config["name"], platform=config["platform"], backend=config["backend"], max_batch_size=config["max_batch_size"],
                input=[pb.ModelInput(**tensor) for tensor in config["input"]], output=[pb.ModelOutput(**tensor) for tensor in config["output"]],
                dynamic_batching=pb.ModelDynamicBatching(**config["dynamic_batching"]),
            ))  # fmt: skip

        return await self._guard(context, call)

    async def ModelStatistics(self, request, context):
        async def call():
            response = pb.ModelStatisticsResponse()
            if request.name:
                self.models.check(request.name, request.version)
            else:  # every model's: only "1" exists
                self.service.check_version("", request.version)
            for entry in self.models.statistics(request.name):
                stats = response.model_stats.add(
                    name=entry["name"], version=entry["version"], last_inference=entry["last_inference"],
                    inference_count=entry["inference_count"], execution_count=entry["execution_count"],
                )
                for kind, duration in entry["inference_stats"].items():
                    getattr(stats.inference_stats, kind).MergeFrom(pb.StatisticDuration(**duration))
                for batch in entry["batch_stats"]:
                    stats.batch_stats.add(batch_size=batch["batch_size"], compute_infer=pb.StatisticDuration(**batch["compute_infer"]))
            return response

        return await self._guard(context, call)

    async def RepositoryIndex(self, request, context):
        entries = self.service.repository_index()
        if request.ready:  # only the models ready now, as the request asks
            entries = [entry for entry in entries if entry.get("state") == "READY"]
        models = [pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in entries]
        return pb.RepositoryIndexResponse(models=models)

    async def RepositoryModelLoad(self, request, context):
        async def call():
            self._check_admin(context)
            await self.service.load_model(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await self._guard(context, call)

    async def RepositoryModelUnload(self, request, context):
        async def call():
            self._check_admin(context)
            await self.service.unload_model(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._guard(context, call)

    async def SystemSharedMemoryStatus(self, request, context):
        async def call():
            response = pb.SystemSharedMemoryStatusResponse()
            for region in self.service.shared_memory.status(request.name):
                response.regions[region["name"]].MergeFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**region))
            return response

        return await self._guard(context, call)

    async def SystemSharedMemoryRegister(self, request, context):
        async def call():
            check_same_host(peer_host(context.peer()))
            self._check_admin(context)
            self.service.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()

        return await self._guard(context, call)

    async def SystemSharedMemoryUnregister(self, request, context):
        async def call():
            check_same_host(peer_host(context.peer()))
            self._check_admin(context)
            self.service.shared_memory.unregister(request.name)
            return pb.SystemSharedMemoryUnregisterResponse()

        return await self._guard(context, call)


def bind_grpc_server(
    service: InferenceService, *, host: str, port: int, max_message_bytes: int = 64 * 1024 * 1024, workflows: Mapping[str, WorkflowExecutor] | None = None,
    admin_token: str | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server for `service`'s models and the served `workflows` (by their deployment names),
    bound to `port` (0: one the system picks) but not started; returns it with the bound port.

    Binding is separate from starting so that the server can take its port before the workers
    load: a port in use is then an error within a second. `max_message_bytes` bounds a request as
    the HTTP frontend's body limit does (answers may be as large as the default, 64 MiB);
    `admin_token` guards model load and unload as over HTTP.
    """
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max(max_message_bytes, 64 * 1024 * 1024)),
                 # gRPC's default SO_REUSEPORT let a second server bind a port a running one
                 # held, and the kernel then split the connections between the two servers.
                 ("grpc.so_reuseport", 0)]  # fmt: skip
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(service, ServedModels(service, workflows), admin_token), server)
    try:
        bound_port = server.add_insecure_port(f"{host_in_url(host)}:{port}")
    except RuntimeError:  # gRPC does not say why; these are the two causes a user can fix
        bound_port = 0
    if bound_port == 0:
        raise InvalidInputError(
            f"--grpc-port {port}: cannot listen on {host}:{port} (the port is in use, or --host is not an address of this machine); "
            "stop what holds the port or choose another one (0 disables gRPC)"
        )
    return server, bound_port

