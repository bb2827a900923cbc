"""The lean baseline of `shoal bench serve`: one uvicorn process and an asyncio batcher.

This is the server a user would write in an afternoon, and the bar shoal must clear despite
doing far more (SLOs, admission, dropping, variants, worker isolation). It is deliberately
plain: one ONNX Runtime session in the server process, a FIFO `asyncio.Queue`, a batcher
task that takes whatever is queued (up to the max batch size, never waiting for more) and
runs it on one executor thread so the event loop keeps accepting requests. There is no
admission control and no deadline: the queue is unbounded and `slo_ms` is ignored.

It speaks the same minimal KServe v2 dialect as shoal (JSON header plus Triton's binary
tensor section, decoded with shoal's codec so that parsing costs the same on both), so the
load generator sends both servers byte-identical requests.

    python -m shoal.experiments.lean_server --model PATH --model-name fixture.rf-64 --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["LeanBatcher", "build_lean_app", "main"]

HEADER_LENGTH = "inference-header-content-length"


class LeanBatcher:
    """FIFO queue + one loop that runs everything queued as one batch (up to max_batch_size requests)."""

    def __init__(self, session: Any, input_name: str, output_name: str, max_batch_size: int):
        self.session = session
        self.input_name = input_name
        self.output_name = output_name
        self.max_batch_size = max_batch_size
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        # One thread: ONNX Runtime parallelises inside a batch with its own intra-op threads.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lean-ort")

    async def infer(self, tensor: np.ndarray) -> tuple[np.ndarray, int]:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((tensor, future))
        return await future

    def _run(self, inputs: np.ndarray) -> np.ndarray:
        (outputs,) = self.session.run([self.output_name], {self.input_name: inputs})
        return outputs

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch_size and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            items = sum(tensor.shape[0] for tensor, _ in batch)
            inputs = batch[0][0] if len(batch) == 1 else np.concatenate([tensor for tensor, _ in batch])
            try:
                outputs = await loop.run_in_executor(self.executor, self._run, inputs)
            except Exception as error:  # a failed batch fails its requests, not the batcher
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            start = 0
            for tensor, future in batch:
                count = tensor.shape[0]
                if not future.done():
                    future.set_result((outputs[start : start + count], items))
                start += count


def build_lean_app(model_path: str, model_name: str, *, max_batch_size: int, threads: int) -> Any:
    """A Starlette app serving one ONNX model at /v2/models/<model_name>/infer."""
    import onnxruntime
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from shoal.runtime.codec import decode_http_request, encode_http_response
    from shoal.runtime.errors import ServingError

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # As shoal's workers, the ceiling and the batch-1 reference run it: the same ONNX Runtime
    # settings for every system compared (spinning threads take the CPU the frontend needs).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    batcher = LeanBatcher(session, input_name, output_name, max_batch_size)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        task = asyncio.create_task(batcher.serve())
        yield
        task.cancel()
        batcher.executor.shutdown(wait=False, cancel_futures=True)

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def infer(request: Request) -> Response:
        if request.path_params["model"] != model_name:
            return JSONResponse({"error": f"model {request.path_params['model']!r} is not served"}, status_code=404)
        body = await request.body()
        header_length = request.headers.get(HEADER_LENGTH)
        try:
            decoded = decode_http_request(body, int(header_length) if header_length else None)
            if decoded.classifications:  # a baseline without it: refused, not answered with the raw scores
                raise ValueError("'classification' (class_count) is not served by this baseline server")
            tensor = decoded.inputs[input_name]
        except (ServingError, KeyError, ValueError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        outputs, batch_size = await batcher.infer(np.ascontiguousarray(tensor, dtype=np.float32))
        payload, json_length = encode_http_response(
            model_name,
            {output_name: outputs},
            request_id=decoded.request_id,
            parameters={"batch_size": batch_size},
            binary_outputs=decoded.binary_outputs,
            binary_by_default=decoded.binary_by_default,
        )
        if json_length is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(json_length)})

    routes = [
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/health/live", ready, methods=["GET"]),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Lean baseline server: uvicorn + asyncio batcher + ONNX Runtime.")
    parser.add_argument("--model", required=True, help="Path of the ONNX model.")
    parser.add_argument("--model-name", required=True, help="Name in /v2/models/<name>/infer.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads.")
    args = parser.parse_args(argv)

    import uvicorn

    app = build_lean_app(args.model, args.model_name, max_batch_size=args.max_batch_size, threads=args.threads)
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
