"""Edge experiment helpers: static predictions, run summaries, best-static choice, the report."""

from __future__ import annotations

import json

import pytest

from shoal.cli.bench_edge_serve import verdict
from shoal.client.edge import FrameRecord
from shoal.client.network import BandwidthTrace
from shoal.core.models import LatencyStats, Profile, Variant
from shoal.experiments.edge_live import best_static, static_candidates
from shoal.experiments.edge_serving import EdgeRun, EdgeScenario, StaticCandidate, choose_statics, predict_static_miss_rate
from shoal.experiments.report import write_edge_report

TRACE = BandwidthTrace("steps", (20.0, 20.0, 2.0, 20.0))  # one slow second in four


def _scenario(**overrides) -> EdgeScenario:
    values = {"family": "f", "trace": TRACE, "offsets_s": (0.0, 1.0), "fps": 10.0, "slo_ms": 100.0, "duration_s": 4.0, "propagation_ms": 5.0}
    return EdgeScenario(**{**values, **overrides})


def test_static_miss_prediction_follows_the_network():
    small = StaticCandidate("f.small", 0.6, 32, 2.0)  # 25 kbit: 12.7 ms even at 2 Mbit/s
    large = StaticCandidate("f.large", 0.9, 128, 4.0)  # 394 kbit: 197 ms at 2 Mbit/s
    assert predict_static_miss_rate(_scenario(), small) == 0.0
    assert predict_static_miss_rate(_scenario(), large) == pytest.approx(0.25)  # the slow second of each window
    # Everything is late when the SLO is shorter than the round trip.
    assert predict_static_miss_rate(_scenario(slo_ms=5.0), small) == 1.0


def test_choose_statics_centres_on_the_predicted_best():
    candidates = [
        StaticCandidate("f.tiny", 0.4, 16, 1.0),
        StaticCandidate("f.small", 0.6, 32, 2.0),
        StaticCandidate("f.mid", 0.7, 64, 3.0),  # 99 kbit: 49 ms at 2 Mbit/s, fits
        StaticCandidate("f.large", 0.9, 128, 4.0),
    ]
    assert [c.variant for c in choose_statics(_scenario(), candidates)] == ["f.small", "f.mid", "f.large"]
    assert [c.variant for c in choose_statics(_scenario(slo_ms=1.0), candidates)] == ["f.tiny", "f.small"]


def _profile(name: str, latency_ms: float) -> Profile:
    stats = LatencyStats(batch_size=1, samples_ms=[latency_ms] * 5, p50_ms=latency_ms, p95_ms=latency_ms, p99_ms=latency_ms, mean_ms=latency_ms)
    return Profile(family="f", variant=name, device="cpu", batches={1: stats}, load_time_ms=1.0)


def test_static_candidates_drop_dominated_variants():
    def variant(name, accuracy, size):
        return Variant(name=name, family="f", input_size_px=size, accuracy=accuracy)

    pairs = [(variant("a", 0.6, 32), _profile("a", 1.0)), (variant("b", 0.55, 64), _profile("b", 2.0)), (variant("c", 0.9, 128), _profile("c", 3.0))]
    assert [c.variant for c in static_candidates("f", pairs)] == ["f.a", "f.c"]


def _run(setting: str, outcomes: list[str], correct: list[bool]) -> EdgeRun:
    run = EdgeRun(setting, _scenario())
    records = []
    for seq, (outcome, right) in enumerate(zip(outcomes, correct)):
        record = FrameRecord(seq, seq / 10, 32, 1, 5.0, 6.0, variant="f.small", outcome=outcome)
        if outcome in ("on_time", "late"):
            record.latency_ms = 40.0 if outcome == "on_time" else 140.0
            record.correct = right
        records.append(record)
    run.records["client-0"] = records
    run.assignments["client-0"] = [(0.0, "f.small", 32), (1.0, "f.small", 32), (2.0, "f.large", 128)]
    return run


def test_summary_counts_every_kind_of_miss():
    run = _run("shoal", ["on_time", "on_time", "late", "dropped", "skipped", "on_time"], [True, False, True, False, False, True])
    summary = run.summary()
    assert summary["frames"] == 6 and summary["answered"] == 4
    assert summary["miss_rate"] == pytest.approx(3 / 6)
    assert summary["accuracy"] == pytest.approx(3 / 4)  # over the answered frames, late ones included
    assert summary["assignment_changes"] == 1


def test_best_static_prefers_accuracy_within_one_percent_misses():
    ok_low = _run("static:f.small", ["on_time"] * 100, [i % 2 == 0 for i in range(100)])
    ok_high = _run("static:f.mid", ["on_time"] * 100, [i % 4 != 0 for i in range(100)])
    missing = _run("static:f.large", ["on_time"] * 90 + ["late"] * 10, [True] * 100)
    assert best_static([ok_low, ok_high, missing]).setting == "static:f.mid"
    assert best_static([missing]).setting == "static:f.large"  # none within 1%: the fewest misses
    # None answered anything (a link that carries no frame): no best one, where the first was starred.
    silent = [_run(f"static:f.{name}", ["skipped"] * 100, [False] * 100) for name in ("small", "mid")]
    assert best_static(silent) is None
    summaries = [_run("shoal", ["on_time"] * 100, [True] * 95 + [False] * 5).summary(), ok_high.summary(), missing.summary()]
    assert verdict(summaries) == {
        "shoal_miss_rate_within_1pct": True,
        "best_static_within_1pct": "static:f.mid",
        "shoal_more_accurate_than_every_static_within_1pct": True,
    }


def test_report_writes_figures_results_and_html(tmp_path):
    runs = [_run("shoal", ["on_time", "late", "on_time"], [True, True, False]), _run("static:f.small", ["on_time"] * 3, [True] * 3)]
    variant = Variant(name="small", family="f", input_size_px=32, accuracy=0.6)
    path = write_edge_report(tmp_path / "report", runs, variants=[(variant, _profile("small", 1.0))], title="t", configuration={"trace": "steps"})
    for name in ("profiles", "timeline", "latency_cdf", "accuracy_vs_misses"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / "report" / f"{name}.pdf").is_file()
    page = path.read_text()
    assert "timeline.png" in page and "static:f.small" in page
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["configuration"] == {"trace": "steps"} and [r["setting"] for r in results["runs"]] == ["shoal", "static:f.small"]
