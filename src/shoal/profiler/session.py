"""ONNX Runtime sessions on a named device, and the model signature checks built on them.

Opening a session is the one place where a device name meets ONNX Runtime, so device
availability is checked here: asking for `cuda:0` on a machine without the CUDA execution
provider is an error, not a silent fall-back to the CPU that would make profiles lie.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime

from shoal.core.errors import DeviceUnavailableError, InvalidInputError, RepositoryError
from shoal.core.models import Device, TensorSpec

__all__ = ["MAX_INTRA_OP_THREADS", "MAX_WORKER_PROCESSES", "available_devices", "create_session", "default_intra_op_threads", "tensor_specs"]

MAX_INTRA_OP_THREADS = 1024
"""More threads than any machine has cores: each is an OS thread with its own stack, and
`--threads 100000` used up the machine's memory and thread limit before the kernel killed it."""
MAX_WORKER_PROCESSES = 256
"""Worker processes one server starts (each a process with its own sessions and shared memory)."""

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
}


def default_intra_op_threads() -> int:
    """Threads per session when the user does not say: every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def available_devices() -> list[Device]:
    """Devices that ONNX Runtime can run on here (CUDA devices are listed by index 0 only)."""
    devices = [Device(name="cpu", kind="cpu", description="CPUExecutionProvider")]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        devices.append(Device(name="cuda:0", kind="cuda", index=0, description="CUDAExecutionProvider"))
    return devices


def check_device(device: Device) -> None:
    if device.kind == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise DeviceUnavailableError(
            f"device {device.name!r} is not available: ONNX Runtime here has only "
            f"{', '.join(onnxruntime.get_available_providers())} (install onnxruntime-gpu on a CUDA machine, or use --device cpu)"
        )


def create_session(
    model: Path | bytes,
    device: Device,
    *,
    intra_op_threads: int | None = None,
) -> onnxruntime.InferenceSession:
    """Open an inference session for a model file (or its bytes) on the given device."""
    check_device(device)
    if intra_op_threads is not None and not 0 <= intra_op_threads <= MAX_INTRA_OP_THREADS:
        raise InvalidInputError(f"intra_op_threads {intra_op_threads}: give 0 (every core) to {MAX_INTRA_OP_THREADS}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or default_intra_op_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Without this, ORT's intra-op threads spin for a while after every run. In a serving
    # process that shares cores with the frontend (and on any busy machine) the spinning
    # steals the CPU the next request needs: measured here, batch-1 p50 of an 85 M MAC model
    # fell from 6.5 ms to 2.3 ms on a loaded 2-core machine with spinning off.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    try:
        session = onnxruntime.InferenceSession(source, sess_options=options, providers=device.onnxruntime_providers)
    except Exception as error:  # ORT raises several unrelated exception types for bad files
        name = "model bytes" if isinstance(model, bytes) else str(model)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RepositoryError(f"{name} is not a loadable ONNX model: {first_line[:300]}") from None
    # ONNX Runtime falls back to the CPU when the CUDA provider is installed but cannot start
    # (no driver, no cuDNN): what runs then is not the device asked for, nor what a profile says.
    wanted = device.onnxruntime_providers[0]
    wanted_name = wanted[0] if isinstance(wanted, tuple) else wanted
    if session.get_providers()[0] != wanted_name:
        raise DeviceUnavailableError(
            f"device {device.name!r}: ONNX Runtime fell back to {session.get_providers()[0]} ({wanted_name} did not start; check the driver and cuDNN, or use --device cpu)"
        )
    return session


def tensor_specs(session: onnxruntime.InferenceSession) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of a session; dynamic or symbolic axes become -1."""

    def convert(node) -> TensorSpec:
        dtype = _ORT_DTYPES.get(node.type)
        if dtype is None:
            raise RepositoryError(f"tensor {node.name!r} has unsupported type {node.type}")
        shape = tuple(dim if isinstance(dim, int) and dim > 0 else -1 for dim in (node.shape or []))
        return TensorSpec(name=node.name, dtype=dtype, shape=shape)

    return [convert(node) for node in session.get_inputs()], [convert(node) for node in session.get_outputs()]
