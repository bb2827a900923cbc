"""What the capacity loop reads: its control file, systems in request bodies, runtime metrics.

- `load_control_file(path) -> ControlSpec`: the base system (inline shoal capacity YAML, or a
  path to anything `shoal plan capacity --system` reads), which runtime variant
  `<family>.<variant>` is which planner server with its replica bounds, and the hysteresis
  settings. Every problem is one `InvalidInputError` naming the file and the field.
- `parse_system_body(body, content_type) -> CapacitySystem`: `POST /optimize` bodies, Inferno
  JSON or shoal YAML/JSON; errors start with `body: field ...`. Bodies cannot name files.
- `parse_metrics(text, taken_at_s) -> MetricsSample`: the runtime's Prometheus text as
  cumulative counters per variant (`CollectError` if it is not Prometheus text).

The format of the control file is documented in docs/capacity.md ("Control loop").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shoal.core.errors import InvalidInputError
from shoal.core.serialization import describe_validation_error, read_yaml_file
from shoal.formats.inferno import PART_FILES, load_system
from shoal.formats.inferno_schema import InfernoSystemFile, ShoalCapacityFile
from shoal.planner.capacity import CapacitySystem
from shoal.planner.capacity_control import HysteresisSettings, MetricsSample, ServerBinding, VariantCounters

__all__ = ["CollectError", "ControlSpec", "load_control_file", "parse_metrics", "parse_system_body"]

_VARIANT_KEY = re.compile(r"^[^.\s/]+\.[^\s/]+$")


class CollectError(Exception):
    """The runtime's metrics could not be read; the cycle reports it and changes nothing."""


# --------------------------------------------------------------------------------------------
# the control file
# --------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _BindingEntry(_Strict):
    server: str = Field(min_length=1)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int | None = Field(None, ge=1)


class _HysteresisEntry(_Strict):
    # Finite: HysteresisSettings refuses infinity ("never scale down" is max_replicas' job).
    scale_up_delay_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    scale_down_delay_s: float = Field(300.0, ge=0, allow_inf_nan=False)
    dead_band_replicas: int = Field(0, ge=0)
    dead_band_fraction: float = Field(0.1, ge=0, allow_inf_nan=False)
    max_step_replicas: int | None = Field(None, ge=1)


class _ControlFile(_Strict):
    system: str | dict[str, Any]
    variants: dict[str, _BindingEntry] = Field(min_length=1)
    hysteresis: _HysteresisEntry = _HysteresisEntry()


@dataclass(frozen=True)
class ControlSpec:
    """What the loop controls: the base system, the variant -> server bindings, hysteresis."""

    base: CapacitySystem
    bindings: tuple[ServerBinding, ...]
    settings: HysteresisSettings
    source: str = ""

    @property
    def by_server(self) -> dict[str, ServerBinding]:
        return {binding.server: binding for binding in self.bindings}


def load_control_file(path: Path) -> ControlSpec:
    """Read a control file (YAML or JSON); every problem names the file and the field."""
    path = Path(path)
    try:
        data = read_yaml_file(path)
    except InvalidInputError as error:
        raise InvalidInputError(f"--base-system {error} (give the YAML or JSON control file)") from None
    try:
        document = _ControlFile.model_validate(data)
    except ValidationError as error:
        raise InvalidInputError(f"{path}: field {describe_validation_error(error)} (fix the file and try again)") from None
    if isinstance(document.system, str):
        base = load_system(path.parent / document.system)
    else:
        try:
            shoal_file = ShoalCapacityFile.model_validate(document.system)
            base = shoal_file.to_system(path.parent)
        except ValidationError as error:
            raise InvalidInputError(f"{path}: field system.{describe_validation_error(error)}") from None
        except InvalidInputError:
            raise
        except ValueError as error:
            raise InvalidInputError(f"{path}: field system: {error}") from None
    servers = {server.name for server in base.servers}
    bindings: list[ServerBinding] = []
    bound: dict[str, str] = {}
    for key, entry in document.variants.items():
        where = f"{path}: field variants.{key}"
        if not _VARIANT_KEY.match(key):
            raise InvalidInputError(f"{where}: a runtime variant is named <family>.<variant>, like fixture.rf-32")
        if entry.server not in servers:
            raise InvalidInputError(
                f"{where}.server: {entry.server!r} is not a server of the system; use one of {', '.join(sorted(servers))}"
            )
        if entry.server in bound:
            raise InvalidInputError(
                f"{where}.server: server {entry.server!r} is already bound to {bound[entry.server]}: bind each server once"
            )
        bound[entry.server] = key
        try:
            bindings.append(ServerBinding(key, entry.server, entry.min_replicas, entry.max_replicas))
        except ValueError as error:
            raise InvalidInputError(f"{where}: {error}") from None
    settings = HysteresisSettings(**document.hysteresis.model_dump())
    return ControlSpec(base=base, bindings=tuple(bindings), settings=settings, source=str(path))


# --------------------------------------------------------------------------------------------
# request bodies and the runtime's metrics
# --------------------------------------------------------------------------------------------


def parse_system_body(body: bytes, content_type: str | None = None) -> CapacitySystem:
    """A system from a request body: Inferno JSON, or shoal's capacity document (YAML or JSON).

    Files cannot be referenced from a body (`profile:` entries are refused).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError("body: is not UTF-8 text; send Inferno JSON or shoal YAML") from None
    if not text.strip():
        raise InvalidInputError("body: is empty; send an Inferno system ({\"system\": {...}}) or a shoal capacity document")
    is_json = "json" in (content_type or "") or text.lstrip().startswith("{")
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"body: is not valid JSON ({error.msg} at line {error.lineno})") from None
    except yaml.YAMLError as error:
        raise InvalidInputError(f"body: is not valid YAML ({str(error).splitlines()[0]})") from None
    except RecursionError:
        raise InvalidInputError("body: is nested too deep to be a capacity document") from None
    if not isinstance(data, dict):
        raise InvalidInputError(
            "body: must be an object: an Inferno system ({\"system\": {\"acceleratorData\": ...}}) "
            "or a shoal capacity document (accelerators, models, service_classes, servers)"
        )
    keys = {str(key).casefold() for key in data}
    if "system" not in keys and keys & {part.casefold() for part in PART_FILES}:
        data = {"system": data}  # Inferno's parts at the top level
        keys = {"system"}
    schema: type[BaseModel] = InfernoSystemFile if "system" in keys else ShoalCapacityFile
    try:
        document = schema.model_validate(data)
    except ValidationError as error:
        raise InvalidInputError(f"body: field {describe_validation_error(error)}") from None
    if isinstance(document, ShoalCapacityFile):
        for index, model in enumerate(document.models):
            if model.profile is not None:
                raise InvalidInputError(
                    f"body: field models.{index}.profile: a request body cannot name files; give batch_latency_ms instead"
                )
    try:
        return document.to_system(Path("."))
    except InvalidInputError as error:
        raise InvalidInputError(f"body: {error}") from None
    except ValueError as error:
        raise InvalidInputError(f"body: {error}") from None


def parse_metrics(text: str, taken_at_s: float) -> MetricsSample:
    """shoal's runtime metrics (Prometheus text) -> counters per `<family>.<variant>`.

    Every per-variant series carries the full key `<family>.<variant>` in its `variant` label
    (`shoal_requests_total` also names the requested model: a family or an exact variant).
    """
    requests: dict[str, dict[str, float]] = {}
    batches: dict[str, list[float]] = {}
    latency: dict[str, list[float]] = {}
    pending: dict[str, float] = {}
    inputs: dict[str, float] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as error:  # the parser raises ValueError and friends on malformed text
        raise CollectError(f"the runtime's /metrics is not Prometheus text ({error})") from None
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "shoal_requests_total":
                key = labels.get("variant", "")
                outcomes = requests.setdefault(key, {})
                outcomes[labels.get("outcome", "")] = outcomes.get(labels.get("outcome", ""), 0.0) + sample.value
            elif sample.name in ("shoal_batch_size_sum", "shoal_batch_size_count"):
                slot = batches.setdefault(labels.get("variant", ""), [0.0, 0.0])
                slot[0 if sample.name.endswith("_count") else 1] = sample.value
            elif sample.name in ("shoal_request_seconds_sum", "shoal_request_seconds_count"):
                slot = latency.setdefault(labels.get("variant", ""), [0.0, 0.0])
                slot[0 if sample.name.endswith("_count") else 1] = sample.value
            elif sample.name == "shoal_pending_requests":
                pending[labels.get("variant", "")] = sample.value
            elif sample.name == "shoal_request_inputs_total":
                inputs[labels.get("variant", "")] = sample.value
    keys = set(requests) | set(batches) | set(pending)
    variants = {
        key: VariantCounters(
            requests_by_outcome=requests.get(key, {}),
            num_batches=batches.get(key, [0.0, 0.0])[0],
            batch_items=batches.get(key, [0.0, 0.0])[1],
            num_answered=latency.get(key, [0.0, 0.0])[0],
            answered_seconds=latency.get(key, [0.0, 0.0])[1],
            pending_requests=pending.get(key, 0.0),
            admitted_inputs=inputs.get(key, 0.0),
        )
        for key in sorted(keys | set(latency))
    }
    return MetricsSample(taken_at_s=taken_at_s, variants=variants)
