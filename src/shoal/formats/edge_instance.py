"""The edge scheduling instance file (JSON), read into `shoal.planner.edge.EdgeInstance`.

    {
      "variants": [{"name": "yolo-320", "accuracy": 0.43, "input_size": 320, "request_kbits": 364.4,
                    "latency_ms": {"1": 6.4, "2": 8.5},
                    "latency_ms_by_device": {"cuda": {"1": 2.1}},          optional, per device
                    "response_kbits": 2.4, "load_ms": 800, "cached_load_ms": 50,   optional, default 0
                    "extra_inputs": [{"input_size": 256, "request_kbits": 259.4, "accuracy": 0.38}]}],
      "workers":  [{"name": "gpu-0", "loaded_variant": "yolo-320",         null if none
                    "device": "cpu", "cached_variants": []}],               optional
      "clients":  [{"name": "cam-1", "slo_ms": 100, "fps": 15, "bandwidth_mbps": 20,
                    "rtt_ms": 1.0, "current_variant": null}],               optional
      "settings": {"server_overhead_ms": 4, "plan_interval_ms": 500}       optional
    }

Units: kbits are 1000 bit, bandwidth is 10**6 bit/s, so kbits / Mbit/s is milliseconds. The
meaning of every field in the latency model is in `shoal.planner.edge.model`. Reading is a
boundary: anything wrong becomes one InvalidInputError naming the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from shoal.core.errors import InvalidInputError
from shoal.core.serialization import describe_validation_error, read_json_file
from shoal.planner.edge.model import (
    EdgeClient,
    EdgeInstance,
    EdgeSettings,
    EdgeVariant,
    EdgeWorker,
    InputOption,
    validate_instance,
)

__all__ = ["EdgeInstanceFile", "parse_edge_instance", "load_edge_instance", "edge_instance_to_dict", "dump_edge_instance"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # files are JSON: no Infinity/NaN to carry


def _no_repeated_batch_sizes(table: Any) -> Any:
    """Before pydantic turns keys into ints: "1" and "01" would become one batch size, the later
    latency winning silently."""
    if isinstance(table, dict):
        seen: dict[int, str] = {}
        for key in table:
            try:
                batch = int(key)
            except (TypeError, ValueError):
                continue  # pydantic names it
            if batch in seen:
                raise ValueError(f"batch size {batch} is given twice ({seen[batch]!r} and {key!r})")
            seen[batch] = key
    return table


LatencyTable = Annotated[dict[int, float], BeforeValidator(_no_repeated_batch_sizes)]


def _check_table(table: dict[int, float]) -> dict[int, float]:
    if not table:
        raise ValueError('needs at least one batch size, e.g. {"1": 12.5}')
    for batch, latency in table.items():
        if batch < 1:
            raise ValueError(f"batch size {batch} must be >= 1")
        if not latency > 0:
            raise ValueError(f"latency of batch size {batch} must be > 0 ms, got {latency}")
    return dict(sorted(table.items()))


class InputOptionFile(_Strict):
    input_size: int = Field(ge=1)
    request_kbits: float = Field(gt=0)
    accuracy: float = Field(ge=0, le=1)


class VariantFile(_Strict):
    name: str = Field(min_length=1)
    accuracy: float = Field(ge=0, le=1)
    input_size: int = Field(ge=1)
    request_kbits: float = Field(gt=0)
    latency_ms: LatencyTable
    latency_ms_by_device: dict[str, LatencyTable] = Field(default_factory=dict)
    response_kbits: float = Field(0.0, ge=0)
    load_ms: float = Field(0.0, ge=0)
    cached_load_ms: float = Field(0.0, ge=0)
    extra_inputs: list[InputOptionFile] = Field(default_factory=list)

    _tables = field_validator("latency_ms")(_check_table)

    @field_validator("latency_ms_by_device")
    @classmethod
    def _device_tables(cls, value: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
        return {device: _check_table(table) for device, table in value.items()}


class WorkerFile(_Strict):
    name: str = Field(min_length=1)
    loaded_variant: str | None = None
    device: str = Field("cpu", min_length=1)
    cached_variants: list[str] = Field(default_factory=list)


class ClientFile(_Strict):
    name: str = Field(min_length=1)
    slo_ms: float = Field(gt=0)
    fps: float = Field(gt=0)
    bandwidth_mbps: float = Field(gt=0)
    rtt_ms: float = Field(0.0, ge=0)
    current_variant: str | None = None


class SettingsFile(_Strict):
    server_overhead_ms: float = Field(0.0, ge=0)
    plan_interval_ms: float = Field(500.0, gt=0)


class EdgeInstanceFile(_Strict):
    variants: list[VariantFile] = Field(min_length=1)
    workers: list[WorkerFile] = Field(min_length=1)
    clients: list[ClientFile]
    settings: SettingsFile = SettingsFile()

    def to_instance(self) -> EdgeInstance:
        variants = tuple(
            EdgeVariant(
                name=v.name,
                accuracy=v.accuracy,
                input_size=v.input_size,
                request_kbits=v.request_kbits,
                latency_ms=dict(v.latency_ms),
                latency_ms_by_device={d: dict(t) for d, t in v.latency_ms_by_device.items()},
                response_kbits=v.response_kbits,
                load_ms=v.load_ms,
                cached_load_ms=v.cached_load_ms,
                extra_inputs=tuple(InputOption(o.input_size, o.request_kbits, o.accuracy) for o in v.extra_inputs),
            )
            for v in self.variants
        )
        workers = tuple(
            EdgeWorker(w.name, device=w.device, loaded_variant=w.loaded_variant, cached_variants=tuple(w.cached_variants))
            for w in self.workers
        )
        clients = tuple(
            EdgeClient(c.name, c.slo_ms, c.fps, c.bandwidth_mbps, rtt_ms=c.rtt_ms, current_variant=c.current_variant)
            for c in self.clients
        )
        settings = EdgeSettings(self.settings.server_overhead_ms, self.settings.plan_interval_ms)
        return EdgeInstance(variants, workers, clients, settings)


def _device_kind(device: str) -> str:
    return device.split(":", 1)[0].strip().casefold()


def parse_edge_instance(data: Any, source: str = "instance") -> EdgeInstance:
    """Validate already-decoded JSON; errors name `source` and the first bad field."""
    try:
        parsed = EdgeInstanceFile.model_validate(data)
    except ValidationError as error:
        raise InvalidInputError(f"{source}: field {describe_validation_error(error)} (fix the file and try again)") from None
    instance = parsed.to_instance()
    try:
        validate_instance(instance)
    except InvalidInputError as error:
        raise InvalidInputError(f"{source}: field {error}") from None
    tabled = {device for variant in instance.variants for device in variant.latency_ms_by_device}
    for index, worker in enumerate(instance.workers):
        near = [
            device for device in tabled
            if device.casefold() == worker.device.casefold() or device.casefold() == _device_kind(worker.device)
        ]
        if worker.device not in tabled and near:
            # A worker on "CUDA" or "cuda:0" beside tables for "cuda" would plan with the default latencies.
            raise InvalidInputError(
                f"{source}: field workers[{index}].device: {worker.device!r} has no latency table, but {near[0]!r} does; "
                "write the device as the tables do"
            )
    names = {variant.name for variant in instance.variants}
    for index, client in enumerate(instance.clients):
        if client.current_variant is not None and client.current_variant not in names:
            raise InvalidInputError(
                f"{source}: field clients[{index}].current_variant: unknown variant {client.current_variant!r}"
            )
    return instance


def load_edge_instance(path: Path | str) -> EdgeInstance:
    path = Path(path)
    data = read_json_file(path, fix="; check the --instance path")
    return parse_edge_instance(data, str(path))


def edge_instance_to_dict(instance: EdgeInstance) -> dict[str, Any]:
    """The file form of an instance; optional fields are written only when they differ from defaults."""

    def table(values) -> dict[str, float]:
        return {str(batch): latency for batch, latency in sorted(values.items())}

    variants = []
    for v in instance.variants:
        entry: dict[str, Any] = {
            "name": v.name,
            "accuracy": v.accuracy,
            "input_size": v.input_size,
            "request_kbits": v.request_kbits,
            "latency_ms": table(v.latency_ms),
        }
        if v.latency_ms_by_device:
            entry["latency_ms_by_device"] = {d: table(t) for d, t in v.latency_ms_by_device.items()}
        for key in ("response_kbits", "load_ms", "cached_load_ms"):
            if getattr(v, key):
                entry[key] = getattr(v, key)
        if v.extra_inputs:
            entry["extra_inputs"] = [
                {"input_size": o.input_size, "request_kbits": o.request_kbits, "accuracy": o.accuracy} for o in v.extra_inputs
            ]
        variants.append(entry)
    workers = []
    for w in instance.workers:
        entry = {"name": w.name, "loaded_variant": w.loaded_variant}
        if w.device != "cpu":
            entry["device"] = w.device
        if w.cached_variants:
            entry["cached_variants"] = list(w.cached_variants)
        workers.append(entry)
    clients = []
    for c in instance.clients:
        entry = {"name": c.name, "slo_ms": c.slo_ms, "fps": c.fps, "bandwidth_mbps": c.bandwidth_mbps}
        if c.rtt_ms:
            entry["rtt_ms"] = c.rtt_ms
        if c.current_variant is not None:
            entry["current_variant"] = c.current_variant
        clients.append(entry)
    result: dict[str, Any] = {"variants": variants, "workers": workers, "clients": clients}
    if instance.settings != EdgeSettings():
        result["settings"] = {
            "server_overhead_ms": instance.settings.server_overhead_ms,
            "plan_interval_ms": instance.settings.plan_interval_ms,
        }
    return result


def dump_edge_instance(instance: EdgeInstance, path: Path | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(edge_instance_to_dict(instance), indent=2) + "\n")
