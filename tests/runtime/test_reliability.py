"""The reliability contract, quick: overload, fuzzing and faults on a live server lose nothing."""

from __future__ import annotations

from shoal.experiments.reliability import run_reliability


def test_every_request_gets_exactly_one_answer_through_overload_fuzzing_and_faults():
    report = run_reliability(quick=True, scale=0.3)
    assert report["requests_sent"] > 1000
    assert report["lost"] == 0, report["statuses"]
    assert report["server_5xx"] == 0, report["server_5xx_by_phase"]
    assert report["answered"] + report["errors"] == report["requests_sent"]
    overload = report["overload"]
    assert overload["burst_shed_429"] > 0 and overload["shed_sampled"] > 0
    assert overload["shed_with_retry_after"] == overload["shed_sampled"]  # every 429 says when to retry
    assert overload["recovered_after_s"] <= 5.0
    faults = report["faults"]
    assert faults["faults_injected"] == 4 and faults["worker_killed_and_restarted"]
    assert faults["controller_kill_status"] == 202 and faults["controller_ticking_again_after_s"] is not None
    assert faults["corrupt_model_load_status"] == 503 and "could not be loaded" in faults["corrupt_model_error"]
    assert faults["served_after_corrupt_load"]
    assert max(faults["ready_variants_after_each_load"]) <= 2  # the cache bound holds
    assert report["clean_shutdown"]
