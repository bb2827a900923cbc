"""Read JellyBean's optimizer input folder as it is shipped (VQA/examples/optimizer_inputs).

Files (CSV without header rows; see shared/anchors/jellybean/SOURCE.md):
    workers_specs.csv                 worker, price ($/hour)
    workers_workers_link.csv          worker_a, worker_b, price ($/GB)           optional
    sources_workers_link.csv          source, worker, price ($/GB)               optional
    logical_graph.csv                 u, v
    input_injection_rates.csv         source, rate (req/s)
    throughput_normalization_ratios.csv            u, v, ratio                 optional
    throughput_normalization_ratios_per_variant.csv u, v, u_variant, v_variant, ratio  optional
    execution_profile.csv             task, worker, variant, latency (ms)
    message_sizes.csv                 u, v, u_variant, v_variant, size (KB = 1024 bytes)
    workers_partition.json            ordered tiers: [[worker, ...], ...]        optional
    accuracy_requirement.json         {"sink": task, "threshold": accuracy}
    nodes_accuracy_profiles.json      the converted pickle (never unpickled here); looked up in
                                      the folder, then in ../derived/
    config.yaml                       JellyBean's yacs overrides (default: the folder's own)

The known defect of the shipped execution profile, a stray trailing comma on one line, is
tolerated with a warning. Every other problem raises InvalidInputError naming file and field.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shoal.core.errors import InvalidInputError
from shoal.core.serialization import read_json_file, read_text_file, read_yaml_file
from shoal.planner.workflow import (
    AccuracySample,
    AccuracySpec,
    EndToEndAccuracyTable,
    JellyBeanSettings,
    TaskAccuracyProfile,
    Worker,
    WorkflowProblem,
)

__all__ = ["InputFormatWarning", "JellyBeanConfig", "JellyBeanInputs", "read_jellybean_inputs"]

BYTES_PER_KB = 1024
ACCURACY_FILE = "nodes_accuracy_profiles.json"


class InputFormatWarning(UserWarning):
    """A defect in an input file that was tolerated (the warning says what and where)."""


# ---- config.yaml (pydantic at the file edge) ---------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")

    @field_validator("*", mode="before")
    @classmethod
    def _yacs_none(cls, value: Any) -> Any:
        return None if value == "None" else value


class _InputSection(_Section):
    LATENCY_OVERESTIMATE_RATIO: float = Field(1.0, gt=0, allow_inf_nan=False)
    COMM_COST_SCALING_FACTOR: float = Field(1.0, ge=0, allow_inf_nan=False)


class _BeamSection(_Section):
    BEST_K: int | None = 10
    ACC_PROFILE_SAMPLE_LIMIT: int | None = None
    PER_ASSIGNMENT_NODE_EXPANSION_LIMIT: int | None = None


class _AssignmentSection(_Section):
    STRATEGY: str = "same-tier"
    TIER_ALLOCATION_STRATEGY: str = "dp"
    MAX_NUM_ASSIGN_ORDERS: int | None = None
    BEST_K_ASSIGNMENTS: int | None = None


class JellyBeanConfig(_Section):
    """config.yaml; defaults are JellyBean's own (optimizer/config.py)."""

    INPUT: _InputSection = _InputSection()
    BEAM_SEARCH: _BeamSection = _BeamSection()
    WORKER_ASSIGNMENT: _AssignmentSection = _AssignmentSection()
    WORKER_PARTITION: dict[str, Any] | None = None

    def settings(self) -> JellyBeanSettings:
        a = self.WORKER_ASSIGNMENT
        return JellyBeanSettings(
            beam_width=self.BEAM_SEARCH.BEST_K,
            accuracy_sample_limit=self.BEAM_SEARCH.ACC_PROFILE_SAMPLE_LIMIT,
            expansion_limit=self.BEAM_SEARCH.PER_ASSIGNMENT_NODE_EXPANSION_LIMIT,
            strategy=a.STRATEGY, tier_allocation=a.TIER_ALLOCATION_STRATEGY,  # type: ignore[arg-type]
            max_assign_orders=a.MAX_NUM_ASSIGN_ORDERS, best_k_assignments=a.BEST_K_ASSIGNMENTS,
        )


def _read_config(path: Path | None) -> JellyBeanConfig:
    if path is None:
        return JellyBeanConfig()
    data = read_yaml_file(path) or {}
    try:
        config = JellyBeanConfig.model_validate(data)
    except ValidationError as error:
        raise InvalidInputError(f"{path}: {_first_error(error)}.") from None
    for section in (config, config.INPUT, config.BEAM_SEARCH, config.WORKER_ASSIGNMENT):
        for key in section.model_extra or {}:
            warnings.warn(f"{path}: unknown option {key!r} ignored", InputFormatWarning, stacklevel=3)
    if config.WORKER_PARTITION:
        warnings.warn(f"{path}: WORKER_PARTITION is ignored (tiers come from workers_partition.json)",
                      InputFormatWarning, stacklevel=3)
    return config


def _first_error(error: ValidationError) -> str:
    item = error.errors()[0]
    where = ".".join(str(p) for p in item["loc"]) or "top level"
    return f"field {where}: {item['msg']}"


# ---- CSV and JSON files ------------------------------------------------------------------


def _rows(path: Path, columns: tuple[str, ...], numeric: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a header-less CSV as dicts; numeric columns parsed to float."""
    text = read_text_file(path)
    rows, stray = [], []
    for line_no, fields in enumerate(csv.reader(text.splitlines()), start=1):
        fields = [f.strip() for f in fields]
        if not fields or fields == [""]:
            continue
        if len(fields) == len(columns) + 1 and fields[-1] == "":
            stray.append(line_no)
            fields = fields[:-1]
        if len(fields) != len(columns):
            raise InvalidInputError(
                f"{path}: line {line_no} has {len(fields)} fields, expected {len(columns)} "
                f"({', '.join(columns)})."
            )
        row: dict[str, Any] = dict(zip(columns, fields))
        for name in numeric:
            try:
                row[name] = float(row[name])
            except ValueError:
                raise InvalidInputError(
                    f"{path}: line {line_no}, field {name!r} is not a number ({row[name]!r}); "
                    "JellyBean's CSV files have no header row."
                ) from None
        row["_line"] = line_no
        rows.append(row)
    if stray:
        warnings.warn(
            f"{path}: line(s) {', '.join(map(str, stray))} end with a stray comma; ignored "
            "(JellyBean's own pandas reader rejects this file)", InputFormatWarning, stacklevel=3,
        )
    return rows


class _Requirement(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    sink: str
    threshold: float


class _Sample(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    inputs_acc: list[float]
    output_acc: float


class _OperatorProfile(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    op_name: str
    inputs: list[str] | None = None
    acc_profile: dict[str, list[_Sample]]
    cost_profile: dict[str, float] = {}
    weight: float = 1.0


class _TableRow(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    variants: list[str]
    accuracy: float


class _EndToEnd(BaseModel):
    model_config = ConfigDict(extra="ignore")
    operators: list[str]
    acc_profile: list[_TableRow]


class _AccuracyProfiles(BaseModel):
    model_config = ConfigDict(extra="ignore")
    end_to_end_profile: _EndToEnd | None = None
    per_operator_profiles: list[_OperatorProfile] = []


def _validated(model: type[BaseModel], path: Path) -> Any:
    try:
        return model.model_validate(read_json_file(path))
    except ValidationError as error:
        raise InvalidInputError(f"{path}: {_first_error(error)}.") from None


def _accuracy_path(inputs_dir: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    for candidate in (inputs_dir / ACCURACY_FILE, inputs_dir.parent / "derived" / ACCURACY_FILE):
        if candidate.is_file():
            return candidate
    hint = " (found nodes_accuracy_profiles.pkl, which shoal never unpickles)" \
        if (inputs_dir / "nodes_accuracy_profiles.pkl").exists() else ""
    raise InvalidInputError(
        f"{inputs_dir}: no {ACCURACY_FILE} here or in ../derived{hint}; convert the pickle to JSON "
        "(format: shared/anchors/jellybean/derived) and pass it with --accuracy FILE."
    )


def _accuracy_spec(path: Path, sink: str, threshold: float) -> AccuracySpec:
    data = _validated(_AccuracyProfiles, path)
    try:
        table = None
        if data.end_to_end_profile is not None:
            e2e = data.end_to_end_profile
            accuracy_by_variants: dict[tuple[str, ...], float] = {}
            for index, row in enumerate(e2e.acc_profile):
                if tuple(row.variants) in accuracy_by_variants:  # the later one won silently
                    raise InvalidInputError(f"end_to_end_profile.acc_profile.{index}: variants {row.variants} are listed twice")
                accuracy_by_variants[tuple(row.variants)] = row.accuracy
            table = EndToEndAccuracyTable(tasks=tuple(e2e.operators), accuracy_by_variants=accuracy_by_variants)
        profiles = {
            p.op_name: TaskAccuracyProfile(
                task=p.op_name, inputs=tuple(p.inputs or ()), weight=p.weight,
                samples_by_variant={v: tuple(AccuracySample(tuple(s.inputs_acc), s.output_acc) for s in ss)
                                    for v, ss in p.acc_profile.items()},
                cost_proxy_by_variant=p.cost_profile,
            )
            for p in data.per_operator_profiles
        }
        return AccuracySpec(sink=sink, target=threshold, table=table, task_profiles=profiles)
    except InvalidInputError as error:  # the planner's own checks name no file
        raise InvalidInputError(f"{path}: {error}") from None


def _keyed(rows: list[dict], path: Path, key: tuple[str, ...], value: str, scale: float = 1.0) -> dict:
    """Rows as {key fields: value}. A key given twice is an error naming both lines: the later
    row used to win silently (a second rate line for a source halved the plan's load)."""
    result: dict = {}
    first_line: dict = {}
    for row in rows:
        row_key = tuple(row[field] for field in key)
        row_key = row_key[0] if len(key) == 1 else row_key
        if row_key in result:
            raise InvalidInputError(f"{path}: line {row['_line']} repeats line {first_line[row_key]} ({', '.join(key)} = {row_key!r}); keep one")
        result[row_key] = row[value] * scale
        first_line[row_key] = row["_line"]
    return result


# ---- the folder --------------------------------------------------------------------------


@dataclass(frozen=True)
class JellyBeanInputs:
    """What the folder describes: the planning problem and the baseline's settings."""

    problem: WorkflowProblem
    jellybean: JellyBeanSettings | None
    config_path: Path | None
    accuracy_path: Path
    jellybean_error: str | None = None


def read_jellybean_inputs(inputs_dir: Path | str, config_path: Path | str | None = None,
                          accuracy_path: Path | str | None = None) -> JellyBeanInputs:
    """Read the folder; `config_path` defaults to <inputs_dir>/config.yaml when present."""
    folder = Path(inputs_dir)
    if not folder.is_dir():
        raise InvalidInputError(f"--inputs {folder}: not a folder of JellyBean optimizer inputs.")
    if (folder / "workers_numbers.csv").exists():
        raise InvalidInputError(f"{folder / 'workers_numbers.csv'}: worker types with counts are not "
                                "supported; list every worker in workers_specs.csv.")
    if config_path is None and (folder / "config.yaml").is_file():
        config_path = folder / "config.yaml"
    config_file = Path(config_path) if config_path is not None else None
    config = _read_config(config_file)
    latency_scale = config.INPUT.LATENCY_OVERESTIMATE_RATIO
    price_scale = config.INPUT.COMM_COST_SCALING_FACTOR

    specs = _rows(folder / "workers_specs.csv", ("worker", "price"), ("price",))
    tiers: dict[str, int] = {}
    partition_file = folder / "workers_partition.json"
    if partition_file.is_file():
        partition = read_json_file(partition_file)
        if not isinstance(partition, list) or not all(isinstance(t, list) and all(isinstance(w, str) for w in t) for t in partition):
            raise InvalidInputError(f"{partition_file}: expected a list of tiers, each a list of worker names.")
        for tier, members in enumerate(partition):
            for name in members:
                if name in tiers:
                    raise InvalidInputError(f"{partition_file}: worker {name!r} is in two tiers.")
                tiers[name] = tier
        missing = [r["worker"] for r in specs if r["worker"] not in tiers]
        if missing:
            raise InvalidInputError(f"{partition_file}: workers {missing} are in no tier.")
    else:
        warnings.warn(f"{partition_file} is missing: every worker is in tier 0 (JellyBean would "
                      "partition them by min-cut, which shoal does not reproduce)",
                      InputFormatWarning, stacklevel=2)
    try:
        workers = tuple(Worker(r["worker"], r["price"], tiers.get(r["worker"], 0)) for r in specs)
    except InvalidInputError as error:
        raise InvalidInputError(f"{folder / 'workers_specs.csv'}: {error}") from None

    def optional(name: str, columns: tuple[str, ...], numeric: tuple[str, ...]) -> list[dict]:
        path = folder / name
        return _rows(path, columns, numeric) if path.is_file() else []

    links = optional("workers_workers_link.csv", ("worker_a", "worker_b", "price"), ("price",))
    source_links = optional("sources_workers_link.csv", ("source", "worker", "price"), ("price",))
    edges = _rows(folder / "logical_graph.csv", ("u", "v"))
    rates = _rows(folder / "input_injection_rates.csv", ("source", "rate"), ("rate",))
    ratios = optional("throughput_normalization_ratios.csv", ("u", "v", "ratio"), ("ratio",))
    ratios_pv = optional("throughput_normalization_ratios_per_variant.csv",
                         ("u", "v", "u_variant", "v_variant", "ratio"), ("ratio",))
    profile = _rows(folder / "execution_profile.csv", ("task", "worker", "variant", "latency_ms"),
                    ("latency_ms",))
    sizes = _rows(folder / "message_sizes.csv", ("u", "v", "u_variant", "v_variant", "size_kb"),
                  ("size_kb",))
    requirement = _validated(_Requirement, folder / "accuracy_requirement.json")
    accuracy_file = _accuracy_path(folder, Path(accuracy_path) if accuracy_path else None)
    accuracy = _accuracy_spec(accuracy_file, requirement.sink, requirement.threshold)

    graph_edges = {(r["u"], r["v"]) for r in edges}
    for name, rows in (("throughput_normalization_ratios.csv", ratios), ("throughput_normalization_ratios_per_variant.csv", ratios_pv)):
        for row in rows:
            if (row["u"], row["v"]) not in graph_edges:  # a misspelt edge left its ratio at 1 silently
                raise InvalidInputError(f"{folder / name}: line {row['_line']}: {row['u']} -> {row['v']} is not an edge of logical_graph.csv")
    known = {w.name for w in workers}
    for name, rows, fields in (("workers_workers_link.csv", links, ("worker_a", "worker_b")),
                               ("sources_workers_link.csv", source_links, ("worker",)),
                               ("execution_profile.csv", profile, ("worker",))):
        for row in rows:
            for f in fields:
                if row[f] not in known:
                    raise InvalidInputError(f"{folder / name}: line {row['_line']}, field {f!r}: "
                                            f"worker {row[f]!r} is not in workers_specs.csv.")
    keyed = dict(
        source_rates_rps=_keyed(rates, folder / "input_injection_rates.csv", ("source",), "rate"),
        latency_ms=_keyed(profile, folder / "execution_profile.csv", ("task", "variant", "worker"), "latency_ms", latency_scale),
        message_bytes=_keyed(sizes, folder / "message_sizes.csv", ("u", "v", "u_variant", "v_variant"), "size_kb", BYTES_PER_KB),
        source_link_usd_per_gb=_keyed(source_links, folder / "sources_workers_link.csv", ("source", "worker"), "price", price_scale),
        worker_link_usd_per_gb=_keyed(links, folder / "workers_workers_link.csv", ("worker_a", "worker_b"), "price", price_scale),
        rate_ratios=_keyed(ratios, folder / "throughput_normalization_ratios.csv", ("u", "v"), "ratio"),
        rate_ratios_per_variant=_keyed(ratios_pv, folder / "throughput_normalization_ratios_per_variant.csv",
                                       ("u", "v", "u_variant", "v_variant"), "ratio"),
    )
    try:
        problem = WorkflowProblem(edges=tuple((r["u"], r["v"]) for r in edges), workers=workers, accuracy=accuracy, **keyed)
    except InvalidInputError as error:
        raise InvalidInputError(f"{folder}: {error}") from None
    try:
        settings, settings_error = config.settings(), None
    except InvalidInputError as error:
        settings, settings_error = None, f"{config_file or 'JellyBean defaults'}: {error}"
    return JellyBeanInputs(problem, settings, config_file, accuracy_file, settings_error)
