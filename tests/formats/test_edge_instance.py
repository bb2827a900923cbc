"""The edge instance file: examples load, round trips, and errors that name file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.core.errors import InvalidInputError
from shoal.formats.edge_instance import (
    dump_edge_instance,
    edge_instance_to_dict,
    load_edge_instance,
    parse_edge_instance,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "edge"


def minimal() -> dict:
    return {
        "variants": [{"name": "v", "accuracy": 0.5, "input_size": 224, "request_kbits": 200, "latency_ms": {"1": 10}}],
        "workers": [{"name": "w", "loaded_variant": "v"}],
        "clients": [{"name": "c", "slo_ms": 100, "fps": 12.5, "bandwidth_mbps": 20}],
    }


def test_examples_load():
    small = load_edge_instance(EXAMPLES / "small.json")
    assert [v.name for v in small.variants] == ["small", "large"]
    assert small.variants[0].latency_ms == {1: 10.0, 2: 15.0, 4: 25.0}
    rich = load_edge_instance(EXAMPLES / "devices_and_inputs.json")
    gpu = next(w for w in rich.workers if w.name == "edge-gpu")
    assert gpu.device == "cuda" and gpu.cached_variants == ("efficientnet",)
    resnet = rich.variant("resnet")
    assert resnet.latency_table("cuda")[8] == 19.0 and resnet.latency_table("cpu")[2] == 40.0
    assert [o.input_size for o in resnet.inputs] == [320, 224]
    assert rich.settings.server_overhead_ms == 2.0
    assert len(load_edge_instance(EXAMPLES / "jellyfish_grid_2x8.json").variants) == 16


@pytest.mark.parametrize("name", ["small.json", "devices_and_inputs.json", "jellyfish_grid_2x8.json"])
def test_round_trip(name, tmp_path):
    instance = load_edge_instance(EXAMPLES / name)
    assert parse_edge_instance(edge_instance_to_dict(instance)) == instance
    dump_edge_instance(instance, tmp_path / name)
    assert load_edge_instance(tmp_path / name) == instance


def test_optional_fields_default():
    instance = parse_edge_instance(minimal())
    assert instance.workers[0].device == "cpu" and instance.clients[0].rtt_ms == 0.0
    assert instance.settings.plan_interval_ms == 500.0
    data = minimal()
    del data["workers"][0]["loaded_variant"]
    assert parse_edge_instance(data).workers[0].loaded_variant is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["variants"][0].pop("latency_ms"), r"variants\.0\.latency_ms: Field required"),
        (lambda d: d["variants"][0].update(latency_ms={"1": -3}), r"latency of batch size 1 must be > 0 ms"),
        (lambda d: d["variants"][0].update(latency_ms={}), r"needs at least one batch size"),
        (lambda d: d["variants"][0].update(latency_ms={"one": 3}), r"variants\.0\.latency_ms\.one"),
        (lambda d: d["variants"][0].update(accuracy=1.5), r"variants\.0\.accuracy: Input should be less than or equal to 1"),
        (lambda d: d["clients"][0].update(fps=0), r"clients\.0\.fps: Input should be greater than 0"),
        (lambda d: d["clients"][0].update(colour="red"), r"clients\.0\.colour: Extra inputs are not permitted"),
        (lambda d: d["workers"][0].update(loaded_variant="x"), r"workers\[0\]\.loaded_variant: unknown variant 'x'"),
        (lambda d: d["clients"][0].update(current_variant="x"), r"clients\[0\]\.current_variant: unknown variant 'x'"),
        (lambda d: d.update(workers=[]), r"workers: List should have at least 1 item"),
        (lambda d: d["clients"].append(dict(d["clients"][0])), r"clients\[1\]\.name: 'c' is used twice"),
        (lambda d: d["clients"][0].update(fps=float("inf")), r"clients\.0\.fps: Input should be a finite number"),  # passed before
        # These were accepted: one batch size with the later latency, a worker planned with the default (CPU) latencies.
        (lambda d: d["variants"][0].update(latency_ms={"01": 3, "1": 4}), r"batch size 1 is given twice \('01' and '1'\)"),
        (lambda d: (d["variants"][0].update(latency_ms_by_device={"cuda": {"1": 2.0}}), d["workers"][0].update(device="cuda:0")),
         r"workers\[0\]\.device: 'cuda:0' has no latency table, but 'cuda' does"),
        (lambda d: d["workers"][0].update(device=""), r"workers\.0\.device: String should have at least 1 character"),
    ],
)
def test_errors_name_the_field(edit, message):
    data = minimal()
    edit(data)
    with pytest.raises(InvalidInputError, match=message):
        parse_edge_instance(data, "my.json")


def test_a_worker_on_another_card_of_a_tabled_kind_keeps_the_default_latencies():
    # Only a near miss of a table's own name is an error: cuda:1 beside a table for cuda:0 is another card.
    data = minimal()
    data["variants"][0]["latency_ms_by_device"] = {"cuda:0": {"1": 2.0}}
    data["workers"][0]["device"] = "cuda:1"
    instance = parse_edge_instance(data)
    assert instance.variants[0].latency_table("cuda:1") == instance.variants[0].latency_ms
    data["workers"][0]["device"] = "CUDA:0"
    with pytest.raises(InvalidInputError, match=r"'CUDA:0' has no latency table, but 'cuda:0' does"):
        parse_edge_instance(data)


def test_file_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot be read .*check the --instance path"):
        load_edge_instance(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InvalidInputError, match=r"broken.json: is not valid JSON"):
        load_edge_instance(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"variants": []}))
    with pytest.raises(InvalidInputError, match=r"wrong.json: field variants: List should have at least 1 item"):
        load_edge_instance(wrong)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b"\xff\xfe{}")
    with pytest.raises(InvalidInputError, match=r"latin1.json: is not UTF-8 text"):  # a UnicodeDecodeError traceback before
        load_edge_instance(latin1)
