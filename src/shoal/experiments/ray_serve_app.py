"""The Ray Serve baseline of `shoal bench serve`: one replica, `@serve.batch`, ORT inside.

Configured the way Ray's documentation recommends for batched inference, and as favourably
as the comparison allows: the same max batch size and ONNX Runtime thread count as every
other system, `max_ongoing_requests` raised well above the batch size (Ray's default of 5
would cap every batch at 5), and a short `batch_wait_timeout_s` so a batch may fill. Ray
gets the same two CPUs as everything else (`ray.init(num_cpus=2)`); the replica reserves
one logical CPU, which only affects Ray's scheduler, not the threads ORT may use.

Requests reach it over HTTP through Ray's proxy at `/v2/models/<model-name>/infer`, in the
same KServe v2 binary dialect as shoal (decoded with shoal's codec), so the load generator
sends it byte-identical requests. Run as a process of its own; it prints READY when serving
and shuts Serve and Ray down on SIGTERM or SIGINT:

    python -m shoal.experiments.ray_serve_app --model PATH --model-name demo.x --port 8000
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

__all__ = ["build_ray_app", "main"]

HEADER_LENGTH = "inference-header-content-length"


def build_ray_app(
    model_path: str,
    model_name: str,
    *,
    max_batch_size: int,
    threads: int,
    max_ongoing_requests: int,
    batch_wait_timeout_s: float,
) -> Any:
    """The bound Serve application (one deployment that is its own HTTP ingress)."""
    from ray import serve

    @serve.deployment(
        name="onnx_model",
        num_replicas=1,
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": 1},
        # The benchmark is over when Serve shuts down: do not wait 20 s for stragglers.
        graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=2.0,
    )
    class OnnxModel:
        def __init__(self) -> None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as every system compared runs it
            self.session = onnxruntime.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
            self.output_name = self.session.get_outputs()[0].name

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def run_batch(self, tensors: list) -> list:
            import numpy as np

            inputs = tensors[0] if len(tensors) == 1 else np.concatenate(tensors)
            (outputs,) = self.session.run([self.output_name], {self.input_name: inputs})
            results, start = [], 0
            for tensor in tensors:
                results.append((outputs[start : start + tensor.shape[0]], int(inputs.shape[0])))
                start += tensor.shape[0]
            return results

        async def __call__(self, request: Any) -> Any:
            import numpy as np
            from starlette.responses import JSONResponse, Response

            from shoal.runtime.codec import decode_http_request, encode_http_response
            from shoal.runtime.errors import ServingError

            body = await request.body()
            header_length = request.headers.get(HEADER_LENGTH)
            try:
                decoded = decode_http_request(body, int(header_length) if header_length else None)
                if decoded.classifications:  # a baseline without it: refused, not answered with the raw scores
                    raise ValueError("'classification' (class_count) is not served by this baseline server")
                tensor = np.ascontiguousarray(decoded.inputs[self.input_name], dtype=np.float32)
            except (ServingError, KeyError, ValueError) as error:
                return JSONResponse({"error": str(error)}, status_code=400)
            outputs, batch_size = await self.run_batch(tensor)
            payload, json_length = encode_http_response(
                model_name,
                {self.output_name: outputs},
                request_id=decoded.request_id,
                parameters={"batch_size": batch_size},
                binary_outputs=decoded.binary_outputs,
                binary_by_default=decoded.binary_by_default,
            )
            if json_length is None:
                return Response(payload, media_type="application/json")
            return Response(payload, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(json_length)})

    return OnnxModel.bind()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ray Serve baseline: @serve.batch + ONNX Runtime behind Ray's HTTP proxy.")
    parser.add_argument("--model", required=True, help="Path of the ONNX model.")
    parser.add_argument("--model-name", required=True, help="Name in /v2/models/<name>/infer.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads in the replica.")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs Ray may schedule on.")
    parser.add_argument("--max-ongoing-requests", type=int, default=0, help="0: 8 x max batch size.")
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    parser.add_argument("--temp-dir", default=None, help="Ray's session folder (short path; default: Ray's).")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    init_options: dict[str, Any] = {
        "num_cpus": args.num_cpus,
        "include_dashboard": False,
        "object_store_memory": 128 * 1024 * 1024,
        "log_to_driver": False,
        "logging_level": "ERROR",
    }
    if args.temp_dir:
        init_options["_temp_dir"] = args.temp_dir
    ray.init(**init_options)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        app = build_ray_app(
            args.model,
            args.model_name,
            max_batch_size=args.max_batch_size,
            threads=args.threads,
            max_ongoing_requests=args.max_ongoing_requests or 8 * args.max_batch_size,
            batch_wait_timeout_s=args.batch_wait_timeout_s,
        )
        serve.run(app, name="shoal_bench", route_prefix=f"/v2/models/{args.model_name}")
        print("READY", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
