"""`shoal plan workflow` and `shoal bench planner workflow` through shoal.cli.main."""

from __future__ import annotations

import json

import pytest

from shoal.cli import main


@pytest.fixture()
def inputs(anchors_dir):
    return str(anchors_dir / "jellybean" / "optimizer_inputs")


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prints_the_exact_plan_as_json_with_jellybeans_keys(capsys, inputs):
    code, out, err = run(capsys, "plan", "workflow", "--inputs", inputs)
    assert code == 0
    assert err.startswith("warning: ") and "stray comma" in err
    plan = json.loads(out)
    for key in ("compute_cost", "communication_cost", "end_to_end_accuracy", "model_assignment",
                "worker_assignment", "load_shares_rps"):
        assert key in plan
    assert plan["status"] == "optimal" and plan["policy"] == "shoal"
    assert plan["compute_cost"] + plan["communication_cost"] == pytest.approx(7.4850184, abs=1e-6)
    assert plan["worker_assignment"]["SpeechRecognition"] == ["workflow-compute-cpu-4", "workflow-compute-gpu-1"]
    shares = plan["load_shares_rps"]["SpeechRecognition"]
    assert sum(shares.values()) == pytest.approx(40.0)
    assert plan["inputs"]["config"].endswith("config.yaml")


def test_jellybean_policy_prints_the_published_plan(capsys, inputs, anchors_dir):
    published = json.loads((anchors_dir / "jellybean" / "expected_output.json").read_text())
    code, out, _ = run(capsys, "plan", "workflow", "--inputs", inputs, "--policy", "jellybean")
    assert code == 0
    plan = json.loads(out)
    for key in ("compute_cost", "communication_cost", "end_to_end_accuracy", "model_assignment",
                "worker_assignment"):
        assert plan[key] == pytest.approx(published[key]) if isinstance(published[key], float) \
            else plan[key] == published[key]


def test_flags_relax_each_rule(capsys, inputs):
    code, out, _ = run(capsys, "plan", "workflow", "--inputs", inputs, "--no-tier-rule", "--shared-workers")
    assert code == 0
    plan = json.loads(out)
    assert plan["options"] == {"tier_rule": False, "shared_workers": True, "billing": "whole"}
    assert plan["total_cost"] == pytest.approx(5.3296433, abs=1e-6)
    code, out, _ = run(capsys, "plan", "workflow", "--inputs", inputs, "--billing", "fractional",
                       "--rate-rps", "20", "--accuracy-target", "57")
    assert code == 0
    plan = json.loads(out)
    assert plan["options"]["billing"] == "fractional" and plan["end_to_end_accuracy"] >= 57


def test_an_unreachable_target_is_one_line_and_exit_2(capsys, inputs):
    code, out, err = run(capsys, "plan", "workflow", "--inputs", inputs, "--accuracy-target", "58.4")
    assert code == 2 and out == ""
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert error_lines == [
        "error: no plan (infeasible): accuracy target 58.4 is unreachable: the best end-to-end accuracy "
        "of any variant combination is 58.33; lower the target or profile more accurate variants."
    ]
    code, _, err = run(capsys, "plan", "workflow", "--inputs", inputs, "--accuracy-target", "58.4",
                       "--policy", "jellybean")
    assert code == 2 and "no plan (failed): JellyBean's beam search finds no variants" in err


@pytest.mark.parametrize("argv, message", [
    (["--inputs", "/nonexistent/folder"], "error: --inputs /nonexistent/folder: not a folder"),
    (["--rate-rps", "0"], "error: --rate-rps must be > 0"),
    (["--policy", "jellybean", "--shared-workers"], "error: policy 'jellybean' follows JellyBean's own rules only"),
    # `shoal workflow deploy` takes a fraction: 0.56 here planned the least accurate variants.
    (["--accuracy-target", "0.56"], "error: --accuracy-target 0.56 reads as a fraction, but nodes_accuracy_profiles.json gives accuracies in percent"),
    (["--accuracy-target", "nan"], "error: --accuracy-target nan: give a number"),
])
def test_bad_input_is_exit_2(capsys, inputs, argv, message):
    if "--inputs" not in argv:
        argv = ["--inputs", inputs] + argv
    code, _, err = run(capsys, "plan", "workflow", *argv)
    assert code == 2 and message in err


def test_bench_on_a_tiny_grid_writes_results(anchors_dir, tmp_path):
    from shoal.experiments.workflow_bench import run_workflow_bench, summary_text, write_results

    results = run_workflow_bench(anchors_dir, quick=True, thresholds=(56.0, 58.4), rates_rps=(40.0,), repeats=1)
    out = tmp_path / "workflow.json"
    write_results(results, out)
    saved = json.loads(out.read_text())
    assert saved["baseline"]["same_assignment"] is True
    optima = {row["name"]: row for row in saved["optima"]}
    assert optima["no_tier_rule"]["within_1e-4"] is True
    # The reference is the plan's own routing (5.3296433); routed proportionally, as the
    # executor does, the same workers cost 5.33004.
    assert optima["no_tier_rule_shared_workers"]["within_1e-4"] is True
    assert abs(optima["no_tier_rule_shared_workers"]["proportional_balancing_total"] - 5.33004) <= 1e-4
    assert all(row["at_or_below_reference"] for row in saved["optima"] if row["reference_total"])
    sweep = saved["sweep"]
    assert sweep["shoal_le_jellybean_everywhere"] is True
    assert sweep["jellybean_failed"] == [[58.4, 40.0]] and sweep["shoal_infeasible"] == [[58.4, 40.0]]
    assert "shoal <= jellybean everywhere: True" in summary_text(results)


def test_what_the_solver_prints_to_descriptor_1_goes_to_stderr_not_into_the_json(capfd):
    """HiGHS printed a debug line straight to file descriptor 1 on some instances, into the
    command's JSON output."""
    import os

    from shoal.cli.plan_workflow import _solver_output_to_stderr

    with _solver_output_to_stderr():
        os.write(1, b"HighsMipSolverData::transformNewIntegerFeasibleSolution\n")
    os.write(1, b"{}\n")
    captured = capfd.readouterr()
    assert captured.out == "{}\n" and "HighsMipSolverData" in captured.err


def test_an_accuracy_target_of_0_is_no_floor_in_either_unit(capsys, inputs):
    # The check for a fraction given against a table in percent refused 0 too.
    code, out, _ = run(capsys, "plan", "workflow", "--inputs", inputs, "--accuracy-target", "0")
    assert code == 0 and json.loads(out)["status"] == "optimal"
