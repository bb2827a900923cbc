"""A ModelStreamInfer client that sends without reading: the server stops reading its requests
once STREAM_MAX_PENDING answers wait for it, instead of holding every answer (a review's client
grew the server to 3 GB in 9 s). Run in a subprocess: shoal's generated protos and
tritonclient's clash in one process, and other tests import tritonclient."""

import subprocess
import sys
import textwrap


def test_a_stream_whose_client_does_not_read_stops_being_read():
    code = textwrap.dedent(
        """
        import asyncio, json
        from types import SimpleNamespace
        import numpy as np
        from shoal.runtime.endpoints import Answer
        from shoal.runtime import grpc_frontend
        from shoal.runtime.grpc_frontend import _Servicer
        STREAM_MAX_PENDING = getattr(grpc_frontend, "STREAM_MAX_PENDING", 128)  # the same check on code without the bound
        from shoal.runtime.proto import grpc_service_pb2 as pb

        class Models:
            def check(self, *args): pass
            def refuse_at_gate(self, *args): return False
            async def infer(self, name, inputs, parameters, requested, received_ms=None, classifications=None):
                return Answer({"y": np.zeros(4, np.float32)}, {})

        pulled = [0]

        async def requests():
            for index in range(20 * STREAM_MAX_PENDING):
                pulled[0] += 1
                request = pb.ModelInferRequest(model_name="m", id=str(index))
                tensor = request.inputs.add(name="x", datatype="FP32", shape=[1])
                request.raw_input_contents.append(np.zeros(1, np.float32).tobytes())
                yield request

        async def main():
            stream = _Servicer(SimpleNamespace(shared_memory=None), Models()).ModelStreamInfer(requests(), None)
            first = await stream.__anext__()  # then the client reads nothing for a while
            await asyncio.sleep(0.5)
            held = pulled[0]
            answered = 1
            async for _ in stream:  # now it reads: every request is answered
                answered += 1
            print(json.dumps({"limit": STREAM_MAX_PENDING, "pulled_while_not_reading": held, "answered": answered,
                              "first_ok": not first.error_message, "total": pulled[0]}))

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["first_ok"]
    assert outcome["pulled_while_not_reading"] <= outcome["limit"] + 2, outcome
    assert outcome["answered"] == outcome["total"] == 20 * outcome["limit"]
