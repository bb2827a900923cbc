"""`shoal bench serve` end to end on the fixture family (short points, no Ray), and its pieces."""

from __future__ import annotations

import csv
import json

import pytest

from shoal.cli import main
from shoal.core.errors import InvalidInputError
from shoal.experiments.bare_onnxruntime import measure_tensor_transport
from shoal.experiments.serve_bench import BenchConfig, run_serve_bench, select_targets
from shoal.experiments.serve_bench_report import summary_text, write_results
from shoal.zoo.repository import ModelRepository


def test_a_family_means_its_heaviest_and_lightest_variant(fixture_repository_path):
    targets = select_targets(ModelRepository(fixture_repository_path), "fixture", include_light=True)
    assert [(t.role, t.variant, t.input_shape) for t in targets] == [("heavy", "rf-64", (1, 3, 64, 64)), ("light", "rf-16", (1, 3, 16, 16))]
    (only,) = select_targets(ModelRepository(fixture_repository_path), "fixture.rf-32", include_light=True)
    assert (only.role, only.key) == ("selected", "fixture.rf-32")


def test_an_unknown_family_or_system_is_a_clear_error(fixture_repository_path):
    with pytest.raises(InvalidInputError, match=r"family 'demo' is not in .* \(families: fixture\); run `shoal zoo build-demo`"):
        select_targets(ModelRepository(fixture_repository_path), "demo", include_light=False)
    with pytest.raises(InvalidInputError, match="variant 'rf-99' is not in family 'fixture'"):
        select_targets(ModelRepository(fixture_repository_path), "fixture.rf-99", include_light=False)
    with pytest.raises(InvalidInputError, match="--systems must be a comma-separated subset of shoal,lean_http,ray_serve,onnxruntime"):
        BenchConfig(repository=fixture_repository_path, systems=("shoal", "triton"))


def test_shoal_workers_share_the_thread_budget_of_the_other_systems(fixture_repository_path, tmp_path):
    from shoal.experiments.serve_bench import _server_argv

    target = select_targets(ModelRepository(fixture_repository_path), "fixture.rf-16", include_light=False)[0]
    config = BenchConfig(repository=fixture_repository_path, ort_threads=2, shoal_workers=2)
    argv = _server_argv("shoal", target, config, 8000, tmp_path)
    assert argv[argv.index("--workers") + 1 :][:5] == ["2", "--threads", "1", "--burst-threads", "2"]
    plain = _server_argv("shoal", target, BenchConfig(repository=fixture_repository_path, ort_threads=2, shoal_workers=2, shoal_burst=False), 8000, tmp_path)
    assert "--burst-threads" not in plain and plain[plain.index("--threads") + 1] == "1"
    lean = _server_argv("lean_http", target, config, 8001, tmp_path)
    assert lean[lean.index("--threads") + 1] == "2"
    default = _server_argv("shoal", target, BenchConfig(repository=fixture_repository_path, ort_threads=2), 8000, tmp_path)
    assert default[default.index("--workers") + 1 :][:5] == ["2", "--threads", "1", "--burst-threads", "2"]  # one per thread
    single = _server_argv("shoal", target, BenchConfig(repository=fixture_repository_path, ort_threads=2, shoal_workers=1), 8000, tmp_path)
    assert single[single.index("--workers") + 1 :][:3] == ["1", "--threads", "2"] and "--burst-threads" not in single
    for workers in (3, 5):
        with pytest.raises(InvalidInputError, match=r"--shoal-workers must divide --threads \(4\)"):
            BenchConfig(repository=fixture_repository_path, ort_threads=4, shoal_workers=workers)


def test_cli_rejects_more_shoal_workers_than_threads(capsys, fixture_repository_path, tmp_path):
    code = main(["bench", "serve", "--repo", str(fixture_repository_path), "--model", "fixture.rf-16", "--quick", "--out", str(tmp_path),
                 "--threads", "1", "--shoal-workers", "2"])  # fmt: skip
    assert code == 2
    assert "--shoal-workers must divide --threads (1)" in capsys.readouterr().err


def test_cli_reports_a_missing_family_in_one_line(capsys, fixture_repository_path, tmp_path):
    code = main(["bench", "serve", "--repo", str(fixture_repository_path), "--model", "demo", "--quick", "--out", str(tmp_path)])
    assert code == 2
    assert "error: --model 'demo': family 'demo' is not in" in capsys.readouterr().err


def test_shared_memory_and_pickle_transport_are_both_measured():
    rows = measure_tensor_transport({"tiny": (3, 8, 8)}, batch_sizes=(1, 4), num_classes=10, repeats=3)
    assert [(row["variant"], row["batch_size"], row["batch_bytes"]) for row in rows] == [("tiny", 1, 768), ("tiny", 4, 3072)]
    assert all(row["shared_memory_us_p50"] > 0 and row["pickle_us_p50"] > 0 for row in rows)


def test_bench_serve_end_to_end_on_the_fixture_family(fixture_repository_path, tmp_path):
    config = BenchConfig(
        repository=fixture_repository_path,
        model="fixture.rf-16",
        slo_ms=200.0,
        quick=True,
        systems=("shoal", "onnxruntime", "lean_http"),
        point_duration_s=0.3,
        ladder=(0.02, 0.2),  # short: the sweep logic still extends, refines and overloads
    )
    steps = []
    results = run_serve_bench(config, progress=lambda description, done, total: steps.append((done, total)))
    files = write_results(results, tmp_path)

    # The headline shape the issue asks for (ray_serve not selected: absent, ratio null).
    assert results["model"] == "fixture.rf-16"
    for system in ("shoal", "lean_http", "onnxruntime"):
        assert results[system]["goodput_rps"] > 0, (system, results[system])
    assert "ray_serve" not in results and results["ratio_vs_ray_serve"] is None
    assert results["ratio_vs_lean"] == pytest.approx(results["shoal"]["goodput_rps"] / results["lean_http"]["goodput_rps"], rel=1e-3)
    assert results["ratio_vs_ceiling"] > 0
    assert isinstance(results["overhead_p50_ms"], float)
    # the reference never exceeds the ceiling run's batch-1 p50, so the overhead is never understated by it
    assert results["shoal"]["ort_batch1_p50_ms"] <= results["onnxruntime"]["batch1_p50_ms_before"]
    assert set(results["targets"]) >= {"goodput_vs_lean >= 0.9x", "overhead_p50_ms <= 1.5", "p99 at 2x overload <= SLO"}

    # Every server answered requests at every kind of point, and nothing went missing.
    systems = results["variants"]["selected"]["systems"]
    for system in ("shoal", "lean_http"):
        points = systems[system]["points"]
        assert {p["kind"] for p in points} >= {"low_load", "sweep", "overload"}
        # Every open-loop point, the overload check included, was followed by the idle wait,
        # so the interleaved other server never started its next point beside a backlog.
        assert all(isinstance(p.get("idle_after"), bool) for p in points if p["kind"] != "low_load")
        for point in points:
            assert point["num_ok"] > 0, (system, point)
            assert point["num_requests"] == point["num_ok"] + point["num_shed"] + point["num_dropped"] + point["num_http_errors"] + point["num_client_errors"]
        assert systems[system]["startup_s"] > 0
    assert all(p["variants"] == {"fixture.rf-16": p["num_ok"]} for p in systems["shoal"]["points"])
    assert [row["batch_size"] for row in results["transport"]] == [1, 32]
    assert steps and steps[-1][0] == steps[-1][1]

    # Files: JSON round-trips, one CSV row per point plus the ceiling, a PNG.
    assert json.loads((tmp_path / "serve.json").read_text())["files"] == files
    rows = list(csv.DictReader((tmp_path / "serve.csv").open()))
    assert len(rows) == len(systems["shoal"]["points"]) + len(systems["lean_http"]["points"]) + 1
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    assert "fixture.rf-16 (selected)" in summary_text(results)


@pytest.mark.parametrize("missing_module", ["ray", "fastapi"])
def test_without_ray_serve_installed_ray_serve_is_null_with_the_reason(fixture_repository_path, tmp_path, monkeypatch, missing_module):
    """Plain `ray` without Ray Serve's HTTP stack (fastapi) is reported the same way as no ray."""
    import importlib.util

    from shoal.experiments import serve_bench

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == missing_module else real_find_spec(name, *args))
    (target,) = select_targets(ModelRepository(fixture_repository_path), "fixture.rf-16", include_light=False)
    config = BenchConfig(repository=fixture_repository_path, model="fixture.rf-16", quick=True)
    results = serve_bench._run_server_group(["ray_serve"], target, config, None, None, None, serve_bench._Steps(None, 1), tmp_path)
    assert results == {"ray_serve": {
        "goodput_rps": None,
        "error": f"Ray Serve is not installed here ({missing_module} missing): pip install 'ray[serve]' (the `bench` extra, which `make install` installs)",
    }}


def test_the_lean_baseline_runs_onnx_runtime_as_shoal_does(fixture_repository_path, monkeypatch):
    """Same ONNX Runtime settings for every system compared: the lean server left its threads
    spinning (ONNX Runtime's default), which shoal, the ceiling and the reference turn off."""
    import onnxruntime

    from shoal.experiments.lean_server import build_lean_app

    made = []
    real = onnxruntime.InferenceSession

    def recording(path, sess_options=None, **kwargs):
        made.append(sess_options)
        return real(path, sess_options=sess_options, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    build_lean_app(str(fixture_repository_path / "fixture" / "rf-16" / "model.onnx"), "fixture.rf-16", max_batch_size=8, threads=1)
    assert made[0].get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_an_overload_point_that_answered_nothing_misses_its_target():
    """It read 'n/a' (no p99 to compare), as if the point had not run."""
    from shoal.experiments.serve_bench import _ratios

    ceiling = {"images_per_s": 100.0, "ms_per_image": 10.0}
    ran = _ratios({"shoal": {"goodput_rps": 50.0, "overhead_p50_ms": 1.0, "overload_p99_ms": None, "overload_goodput_rps": 0.0}}, ceiling, 50.0)
    assert ran["targets"]["p99 at 2x overload <= SLO"] is False
    not_run = _ratios({"shoal": {"goodput_rps": 50.0, "overhead_p50_ms": 1.0, "overload_p99_ms": None, "overload_goodput_rps": None}}, ceiling, 50.0)
    assert not_run["targets"]["p99 at 2x overload <= SLO"] is None
