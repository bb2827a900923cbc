"""`shoal workflow deploy` and `shoal workflow run` through shoal.cli.main."""

from __future__ import annotations

import json

import pytest

from shoal.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_deploy_then_run_reports_planned_and_measured_shares(capsys, fixture_repository_path, tmp_path):
    out = tmp_path / "flow"
    code, stdout, err = run(
        capsys, "workflow", "deploy", "--repo", str(fixture_repository_path), "--family", "fixture", "--out", str(out),
        "--worker", "edge:0.05:0", "--worker", "cloud:0.2:1", "--rate-rps", "20", "--accuracy-target", "0.5", "--json",
    )
    assert code == 0, err
    answer = json.loads(stdout)
    assert answer["plan"]["status"] == "optimal" and answer["plan"]["end_to_end_accuracy"] >= 0.5
    assert (out / "deployment.json").is_file()
    results = tmp_path / "run.json"
    code, stdout, err = run(
        capsys, "workflow", "run", "--repo", str(fixture_repository_path), "--deployment", str(out / "deployment.json"),
        "--requests", "50", "--out", str(results), "--json",
    )
    assert code == 0, err
    measured = json.loads(stdout)
    assert measured["answered"] == 50 and json.loads(results.read_text())["answered"] == 50
    assert measured["measured_accuracy"] == pytest.approx(answer["plan"]["end_to_end_accuracy"], abs=0.05)


@pytest.mark.parametrize(
    ("worker", "message"),
    [("edge", "NAME:PRICE_USD_PER_HOUR"), ("edge:cheap", "price must be a number"), ("edge:0.1:top", "tier an integer"),
     ("edge:inf", "finite number >= 0"), ("edge:0.1:0:tpu", "device 'tpu' is not understood")],  # tracebacks before
)
def test_bad_worker_specs_are_one_clear_line(capsys, fixture_repository_path, tmp_path, worker, message):
    code, _, err = run(capsys, "workflow", "deploy", "--repo", str(fixture_repository_path), "--family", "fixture",
                       "--out", str(tmp_path / "x"), "--worker", worker)
    assert code == 2 and err.startswith("error: --worker") and message in err


def test_an_out_folder_that_is_a_file_is_named(capsys, fixture_repository_path, tmp_path):
    (tmp_path / "afile").write_text("")
    code, _, err = run(capsys, "workflow", "deploy", "--repo", str(fixture_repository_path), "--family", "fixture", "--out", str(tmp_path / "afile"))
    assert code == 2 and err.startswith(f"error: --out {tmp_path / 'afile'}: is a file")


def test_an_unreachable_accuracy_target_is_an_error_not_a_plan(capsys, fixture_repository_path, tmp_path):
    code, _, err = run(capsys, "workflow", "deploy", "--repo", str(fixture_repository_path), "--family", "fixture",
                       "--out", str(tmp_path / "x"), "--accuracy-target", "0.999")
    assert code == 2 and "cannot be deployed: infeasible" in err and "unreachable" in err


def test_bench_modelless_names_the_missing_profiles(capsys, fixture_repository_path):
    code, _, err = run(capsys, "bench", "modelless", "--repo", str(fixture_repository_path), "--family", "fixture", "--quick")
    assert code == 2 and "has no cpu profile" in err and "shoal profile --family fixture" in err
