"""Reading Inferno's JSON and shoal's capacity YAML; writing Inferno's solution shape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shoal.core.errors import InvalidInputError
from shoal.core.models import LatencyStats, Profile
from shoal.formats.inferno import PART_FILES, load_system, solution_json
from shoal.planner.capacity import BatchLatencyTable, DecodePrefillParams, IterationParams, plan_capacity


@pytest.fixture(scope="module")
def small_dir(anchors_dir) -> Path:
    return anchors_dir / "inferno" / "sample-data@849e1e8" / "small"


@pytest.fixture
def parts(small_dir, tmp_path) -> Path:
    """A writable copy of the small set's per-part files."""
    folder = tmp_path / "small"
    folder.mkdir()
    for name in PART_FILES.values():
        shutil.copy(small_dir / name, folder / name)
    return folder


def _edit(folder: Path, part: str, change) -> None:
    path = folder / part
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_folder_and_system_file_read_the_same_system(small_dir):
    from_folder = load_system(small_dir)
    from_file = load_system(small_dir / "system-data.json")
    assert from_folder.servers == from_file.servers and from_folder.models == from_file.models
    assert from_folder.capacity_by_type == from_file.capacity_by_type == {"L4": 1024, "A100": 512, "AIU2": 2048, "G2": 1048}
    # The two files of the published set disagree on this one option.
    assert (from_folder.options.saturation_policy, from_file.options.saturation_policy) == ("RoundRobin", "PriorityRoundRobin")


def test_units_and_case_insensitive_keys(small_dir):
    system = load_system(small_dir)
    server = next(s for s in system.servers if s.name == "Bronze-llama_13b")
    assert server.load.arrival_rate_rps == pytest.approx(2.0)  # 120 per minute
    assert (server.load.avg_in_tokens, server.load.avg_out_tokens) == (128, 1024)  # "AvgInTokens" in the file
    assert system.options.solver == "greedy"  # "milpsolver": false
    four = system.accelerator("4xA100")
    assert (four.type, four.multiplicity, four.cost_cents_per_hour) == ("A100", 4, 160.0)


def test_generation_detection(small_dir, anchors_dir, tmp_path):
    assert {m.generation for m in load_system(small_dir).models} == {"G1"}
    assert isinstance(load_system(small_dir).models[0].params, DecodePrefillParams)
    source = anchors_dir / "inferno" / "control-loop@5451d7f" / "inferno-data" / "vllm-gpu"
    for name in PART_FILES.values():
        if (source / name).exists():
            shutil.copy(source / name, tmp_path / name)
    (tmp_path / "server-data.json").write_text(json.dumps({"servers": [
        {"name": "p-llama", "class": "Premium", "model": "llama_3_1_8b",
         "currentAlloc": {"load": {"arrivalRate": 120, "avgInTokens": 512, "avgOutTokens": 256}}}]}))
    system = load_system(tmp_path)
    assert {m.generation for m in system.models} == {"G2"}
    assert isinstance(system.models[0].params, IterationParams)
    plan = plan_capacity(system, solver="greedy")
    assert plan.generations == ("G2",) and plan.allocation("p-llama").status == "served"


@pytest.mark.parametrize(
    "part, change, message",
    [
        ("server-data.json", lambda d: d["servers"][0].pop("name"), "server-data.json: field servers.0.name: Field required"),
        ("accelerator-data.json", lambda d: d["accelerators"][1].update(cost=-1),
         "accelerator-data.json: field accelerators.1.cost: Input should be greater than or equal to 0"),
        ("server-data.json", lambda d: d["servers"][2]["currentAlloc"]["load"].update(arrivalRate="lots"),
         "field servers.2.currentAlloc.load.arrivalRate: Input should be a valid number"),
        ("model-data.json", lambda d: d["models"][0].pop("prefillParms"), "field models.0: Value error, G1 parameters need both"),
        ("model-data.json", lambda d: d["models"][0].update(perfParms={"alpha": 1, "beta": 1, "gamma": 1}),
         "has both G1 (decodeParms/prefillParms) and G2 (perfParms)"),
        ("model-data.json", lambda d: d["models"][0].update(alpha=1, beta=2, decodeParms=None, prefillParms=None),
         "flat alpha/beta are the G0 performance model"),
        ("serviceclass-data.json", lambda d: d["serviceClasses"][0]["modelTargets"][0].update({"slo-ttft": 0, "slo-ttw": 500}),
         "field serviceClasses.0.modelTargets.0: Value error, slo-ttw"),
        # Beside the fields shoal reads, G0's were ignored silently.
        ("serviceclass-data.json", lambda d: d["serviceClasses"][0]["modelTargets"][0].update({"slo-ttw": 1}),
         "field serviceClasses.0.modelTargets.0: Value error, slo-ttw"),
        ("model-data.json", lambda d: d["models"][0].update(alpha=999), "flat alpha/beta are the G0 performance model"),
        # 1e400 is valid JSON for infinity; the planner then dropped the accelerator with a reason in its own terms.
        ("model-data.json", lambda d: d["models"][0]["decodeParms"].update(alpha=float("inf")),
         "field models.0.decodeParms.alpha: Input should be a finite number"),
        ("server-data.json", lambda d: d["servers"][0]["currentAlloc"]["load"].update(arrivalRate=float("inf")),
         "field servers.0.currentAlloc.load.arrivalRate: Input should be a finite number"),
        ("optimizer-data.json", lambda d: d["optimizer"].update(saturationPolicy="Fair"),
         "field optimizer.saturationPolicy: Input should be 'None', 'PriorityExhaustive'"),
        ("server-data.json", lambda d: d["servers"][0].update(NAME="dup"), "keys 'name' and 'NAME' differ only in case"),
        ("server-data.json", lambda d: d["servers"][1].update(name=d["servers"][0]["name"]),
         "server 'Premium-llama_13b' is defined twice"),
    ],
)
def test_malformed_files_name_the_file_and_field(parts, part, change, message):
    _edit(parts, part, change)
    with pytest.raises(InvalidInputError) as error:
        load_system(parts)
    assert message in str(error.value)
    assert str(parts) in str(error.value)


def test_not_json_and_missing_parts(parts, tmp_path):
    (parts / "capacity-data.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match=r"capacity-data.json: is not valid JSON"):
        load_system(parts)
    (parts / "server-data.json").unlink()
    with pytest.raises(InvalidInputError, match="folder lacks server-data.json"):
        load_system(parts)
    with pytest.raises(InvalidInputError, match="no such file or folder"):
        load_system(tmp_path / "nowhere")
    other = tmp_path / "system.json"
    other.write_text(json.dumps({"servers": []}))
    with pytest.raises(InvalidInputError, match="field system: missing"):
        load_system(other)


SHOAL_YAML = """
accelerators:
  - {name: A100, type: A100, cost_cents_per_hour: 40}
  - {name: cpu8, type: cpu, cost_cents_per_hour: 5}
capacity: {A100: 8, cpu: 64}
models:
  - name: llama
    accelerator: A100
    max_batch_size: 32
    at_tokens: 512
    decode: {alpha_ms: 20.58, beta_ms: 0.41}
    prefill: {gamma_ms: 164.64, delta_ms: 0.0128125}
  - name: qwen
    accelerator: A100
    max_batch_size: 64
    iteration: {alpha_ms: 10.6, beta_ms: 0.042, gamma_ms: 0.0000577}
  - name: resnet
    accelerator: cpu8
    batch_latency_ms: {1: 20, 4: 50, 8: 90}
  - name: resnet
    accelerator: A100
    profile: resnet-cuda-0.json
service_classes:
  - name: Gold
    priority: 1
    targets:
      - {model: llama, itl_ms: 40, ttft_ms: 1000}
      - {model: qwen, itl_ms: 25, ttft_ms: 1500}
      - {model: resnet, latency_ms: 60}
servers:
  - {name: chat, service_class: Gold, model: llama, arrival_rate_rps: 1.0, avg_in_tokens: 128, avg_out_tokens: 1024}
  - {name: code, service_class: Gold, model: qwen, arrival_rate_rps: 0.5, avg_in_tokens: 512, avg_out_tokens: 256}
  - {name: vision, service_class: Gold, model: resnet, arrival_rate_rps: 300}
optimizer: {saturation_policy: PriorityExhaustive}
"""


@pytest.fixture
def shoal_yaml(tmp_path) -> Path:
    profile = Profile(family="demo", variant="resnet", device="cuda:0", load_time_ms=5.0, batches={
        b: LatencyStats(batch_size=b, p50_ms=ms, p95_ms=ms, p99_ms=ms, mean_ms=ms)
        for b, ms in {1: 2.0, 8: 6.0, 32: 18.0}.items()})
    (tmp_path / "resnet-cuda-0.json").write_text(profile.model_dump_json())
    path = tmp_path / "system.yaml"
    path.write_text(SHOAL_YAML)
    return path


def test_shoal_yaml_with_every_kind_of_model(shoal_yaml):
    system = load_system(shoal_yaml)
    assert [m.generation for m in system.models] == ["G1", "G2", "profile", "profile"]
    from_profile = system.models[3]
    assert isinstance(from_profile.params, BatchLatencyTable) and from_profile.max_batch_size == 32
    plan = plan_capacity(system, solver="milp")
    assert set(plan.served) == {"chat", "code", "vision"}
    assert plan.generations == ("G1", "G2", "profile")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("optimizer: {saturation_policy: PriorityExhaustive}", "optimizer: {policy: x}", "field optimizer.policy: Extra inputs are not permitted"),
        ("    iteration: {alpha_ms: 10.6", "    batch_latency_ms: {1: 3}\n    iteration: {alpha_ms: 10.6",
         "give exactly one of decode+prefill (G1), iteration (G2), batch_latency_ms or profile, not iteration and batch_latency_ms"),
        ("arrival_rate_rps: 300", "arrival_rate_rps: -3", "field servers.2.arrival_rate_rps: Input should be greater than or equal to 0"),
        ("profile: resnet-cuda-0.json", "profile: missing.json", "missing.json: cannot be read"),
        ("batch_latency_ms: {1: 20, 4: 50, 8: 90}", "batch_latency_ms: {1: 20, 4: .inf, 8: 90}",
         "field models.2.batch_latency_ms.4: Input should be a finite number"),
        ("{alpha_ms: 10.6,", "{alpha_ms: .nan,", "field models.1.iteration.alpha_ms: Input should be a finite number"),
        # A profile file's latencies are held to what an inline table is (a 0 made the server unserved).
        ("profile: resnet-cuda-0.json", "profile: zero.json", "zero.json: the mean latency of batch 1 must be > 0 ms"),
    ],
)
def test_shoal_yaml_errors_name_the_field(shoal_yaml, old, new, message):
    profile = Profile(family="demo", variant="resnet", device="cuda:0", load_time_ms=5.0, batches={
        1: LatencyStats(batch_size=1, p50_ms=0.0, p95_ms=0.0, p99_ms=0.0, mean_ms=0.0)})
    (shoal_yaml.parent / "zero.json").write_text(profile.model_dump_json())
    shoal_yaml.write_text(SHOAL_YAML.replace(old, new))
    with pytest.raises(InvalidInputError) as error:
        load_system(shoal_yaml)
    assert message in str(error.value)


def test_solution_json_has_inferno_shape(small_dir):
    plan = plan_capacity(load_system(small_dir), solver="greedy")
    solution = solution_json(plan)
    assert solution["total_cost"] == 43_819
    entry = solution["allocations"]["Free-llama_70b"]
    assert {k: entry[k] for k in ("accelerator", "numReplicas", "maxBatch", "cost")} == {
        "accelerator": "4xA100", "numReplicas": 106, "maxBatch": 2, "cost": 16_960}
    assert entry["load"] == {"arrivalRate": 240, "avgInTokens": 128, "avgOutTokens": 1024}
    assert {"itlAverage", "ttftAverage", "status", "generation", "requiredReplicas"} <= set(entry)
    assert solution["unserved"] == {} and solution["generations"] == ["G1"]
    json.dumps(solution)  # plain JSON types only
