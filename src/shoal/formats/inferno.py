"""Read capacity-planning inputs: Inferno's JSON and shoal's own YAML; write Inferno's solution.

Inferno (llm-inferno) describes a system in six parts — accelerator, capacity, model,
service-class, server and optimizer data — either in one `system-data.json` (`{"system":
{"acceleratorData": ..., ...}}`) or in a folder of `<part>-data.json` files. Its Go reader
matches keys case-insensitively and the published files rely on that (`AvgInTokens`,
`milpsolver`), so keys are matched the same way here. Units are converted explicitly at this
edge: `arrivalRate` is requests per MINUTE (shoal uses per second); times are milliseconds;
`cost` is cents per hour per accelerator.

The performance-model generation of each model entry is detected from its keys:
`decodeParms` + `prefillParms` is G1, `perfParms` is G2; the flat `alpha`/`beta` of G0 and
the `slo-ttw` waiting-time target are rejected with the fix.

shoal's YAML (`*.yaml`/`*.yml`) says the same with units in names and also accepts DNN models
from shoal's own profiles (`batch_latency_ms` or a `profile` JSON file); see docs/capacity.md.

Every problem is one `InvalidInputError` naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shoal.core.errors import InvalidInputError
from shoal.core.serialization import describe_validation_error, read_json_file, read_yaml_file
from shoal.formats.inferno_schema import PART_MODELS, InfernoSystemFile, ShoalCapacityFile
from shoal.planner.capacity import CapacityPlan, CapacitySystem

__all__ = ["PART_FILES", "load_system", "load_inferno_system", "load_shoal_system", "solution_json"]

# Folder layout: the file name of each part and the key it holds in system-data.json.
PART_FILES: dict[str, str] = {
    "acceleratorData": "accelerator-data.json",
    "capacityData": "capacity-data.json",
    "modelData": "model-data.json",
    "serviceClassData": "serviceclass-data.json",
    "serverData": "server-data.json",
    "optimizerData": "optimizer-data.json",
}
_REQUIRED_PARTS = ("acceleratorData", "modelData", "serviceClassData", "serverData")


def _validate(model: type, data: Any, source: str, prefix: str = ""):
    try:
        return model.model_validate(data)
    except ValidationError as error:
        where = describe_validation_error(error)
        if prefix and not where.startswith("<root>"):
            where = f"{prefix}.{where}"
        elif prefix:
            where = prefix + where.removeprefix("<root>")
        raise InvalidInputError(f"{source}: field {where} (fix the file and try again)") from None


def _build(document: Any, source: str, base: Path) -> CapacitySystem:
    try:
        return document.to_system(base)
    except InvalidInputError:
        raise
    except ValueError as error:
        raise InvalidInputError(f"{source}: {error}") from None


def load_inferno_system(path: Path) -> CapacitySystem:
    """A `system-data.json` file, or a folder of Inferno's per-part files."""
    path = Path(path)
    if path.is_dir():
        single = path / "system-data.json"
        missing = [PART_FILES[part] for part in _REQUIRED_PARTS if not (path / PART_FILES[part]).is_file()]
        if missing and single.is_file():
            return load_inferno_system(single)
        if missing:
            raise InvalidInputError(
                f"{path}: folder lacks {', '.join(missing)}; give a folder with "
                f"{', '.join(PART_FILES.values())} (capacity and optimizer optional) or a system-data.json"
            )
        parts: dict[str, Any] = {}
        for part, file_name in PART_FILES.items():
            file = path / file_name
            if file.is_file():
                data = read_json_file(file)
                _validate(PART_MODELS[part], data, str(file))  # errors name this file and its field
                parts[part] = data
        return _build(_validate(InfernoSystemFile, {"system": parts}, str(path)), str(path), path)
    data = read_json_file(path)
    if not isinstance(data, dict) or not any(str(key).casefold() == "system" for key in data):
        raise InvalidInputError(
            f"{path}: field system: missing; a system-data.json holds {{\"system\": {{\"acceleratorData\": ...}}}} "
            "(give a folder for per-part files)"
        )
    return _build(_validate(InfernoSystemFile, data, str(path)), str(path), path.parent)


def load_shoal_system(path: Path) -> CapacitySystem:
    """shoal's own capacity YAML (units in names; DNN profiles allowed)."""
    path = Path(path)
    data = read_yaml_file(path)
    return _build(_validate(ShoalCapacityFile, data, str(path)), str(path), path.parent)


def load_system(path: Path) -> CapacitySystem:
    """Pick the reader by what `path` is: folder or .json -> Inferno, .yaml/.yml -> shoal."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"--system {path}: no such file or folder")
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        return load_shoal_system(path)
    if path.is_dir() or path.suffix.lower() == ".json":
        return load_inferno_system(path)
    raise InvalidInputError(
        f"--system {path}: expected a system-data.json, a folder of Inferno JSON files or a shoal .yaml file"
    )


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


def solution_json(plan: CapacityPlan) -> dict[str, Any]:
    """Inferno's `solution-data.json` shape plus `total_cost` and what shoal adds.

    `allocations` holds the servers that got replicas (as Inferno does); `cost` and
    `total_cost` are cents per hour; `load.arrivalRate` is back in requests per minute.
    Servers left out are listed under `unserved` with the reason.
    """
    allocations: dict[str, Any] = {}
    unserved: dict[str, str] = {}
    for allocation in plan.allocations:
        if allocation.status == "unserved":
            unserved[allocation.server] = allocation.reason
            continue
        entry: dict[str, Any] = {
            "accelerator": allocation.accelerator,
            "numReplicas": allocation.num_replicas,
            "maxBatch": allocation.max_batch_size,
            "cost": _round(allocation.cost_cents_per_hour),
            "itlAverage": _round(allocation.itl_ms),
            "ttftAverage": _round(allocation.ttft_ms),
            "load": {
                "arrivalRate": _round(allocation.load.arrival_rate_rps * 60.0),
                "avgInTokens": _round(allocation.load.avg_in_tokens),
                "avgOutTokens": _round(allocation.load.avg_out_tokens),
            },
        }
        if allocation.generation == "profile":
            entry["latencyAverage"] = _round(allocation.latency_ms)
        if allocation.blocking_probability is not None:
            entry["blockingProbability"] = _round(allocation.blocking_probability)
        entry["status"] = allocation.status
        entry["requiredReplicas"] = allocation.required_replicas
        entry["generation"] = allocation.generation
        if allocation.reason:
            entry["reason"] = allocation.reason
        allocations[allocation.server] = entry
    return {
        "allocations": allocations,
        "total_cost": _round(plan.total_cost_cents_per_hour),
        "solver": plan.solver,
        "status": plan.status,
        "saturationPolicy": plan.saturation_policy,
        "generations": list(plan.generations),
        "unitsUsed": dict(plan.units_used_by_type),
        "unitsAvailable": None if plan.units_available_by_type is None else dict(plan.units_available_by_type),
        "unserved": unserved,
        **({"message": plan.message} if plan.message else {}),
    }
