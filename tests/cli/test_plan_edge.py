"""`shoal plan edge` and `shoal bench planner edge`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.cli import main
from shoal.experiments import edge_bench

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "edge"


@pytest.mark.parametrize("policy", ["shoal", "jellyfish", "exact"])
def test_plan_edge_prints_the_plan(policy, capsys):
    assert main(["plan", "edge", "--instance", str(EXAMPLES / "small.json"), "--policy", policy]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["objective"] == pytest.approx(32.5 / 60)
    assert plan["workers"]["worker-b"] == {"variant": "large", "batch_size": 1}
    assert plan["clients"]["cam-4"] is None
    assert plan["clients"]["cam-3"] == {"worker": "worker-a", "variant": "small", "input_size": 224}
    assert "cam-4" in plan["unserved"] and plan["policy"] == policy


def test_default_policy_is_shoal(capsys):
    assert main(["plan", "edge", "--instance", str(EXAMPLES / "devices_and_inputs.json")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["policy"] == "shoal" and plan["status"] == "some_unserved"


def test_bad_instance_is_one_line_on_stderr(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"variants": [], "workers": [], "clients": []}))
    assert main(["plan", "edge", "--instance", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.json: field variants" in err and err.count("\n") == 1


def test_unknown_policy_is_a_usage_error(capsys):
    assert main(["plan", "edge", "--instance", str(EXAMPLES / "small.json"), "--policy", "greedy"]) == 2
    assert "greedy" in capsys.readouterr().err


def test_bench_quick_json_shape(monkeypatch, tmp_path, capsys):
    tiny = edge_bench.BenchConfig(
        quality_cells=((2, 2, 2),), speed_cells=((2, 2, 1), (4, 2, 1)), exact_speed_max_clients=4, name="tiny"
    )
    monkeypatch.setattr(edge_bench.BenchConfig, "quick", classmethod(lambda cls: tiny))
    assert main(["bench", "planner", "edge", "--quick", "--json", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    for policy in ("shoal", "jellyfish"):
        assert set(summary[policy]) == {"mean_ratio_to_exact", "min_ratio_to_exact", "served_fraction"}
        assert summary[policy]["mean_ratio_to_exact"] <= 1 + 1e-9
    assert set(summary["runtime_ms"]["shoal"]) == {"2x4", "4x8"}
    assert set(summary["runtime_ms"]["exact"]) == {"2x4"}
    report = json.loads((tmp_path / "edge.json").read_text())
    assert report["quality"]["cells"][0]["instances"] == 2
    assert (tmp_path / "edge_quality.png").stat().st_size > 1000


def test_bench_tables_render():
    report = edge_bench.run_benchmark(
        edge_bench.BenchConfig(quality_cells=((2, 2, 1),), speed_cells=((2, 2, 1),), exact_speed_max_clients=4)
    )
    text = edge_bench.markdown_tables(report)
    assert "| 2 x 4 | 1 |" in text and "shoal median ms" in text
