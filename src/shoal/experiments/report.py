"""Plots (PNG and PDF) and a one-page HTML report of edge runs.

Figures: the family's profile (accuracy against batch-1 latency; latency against batch size),
each client's adaptation timeline (link bandwidth, the client's estimate, the input size it
sent, misses marked), latency CDFs with the P99 and the SLO marked, and accuracy against miss
rate per setting.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from shoal.core.models import Profile, Variant  # noqa: E402
from shoal.experiments.edge_serving import EdgeRun  # noqa: E402

__all__ = ["write_edge_report"]


def _save(figure, directory: Path, stem: str) -> str:
    figure.tight_layout()
    figure.savefig(directory / f"{stem}.png", dpi=110)
    figure.savefig(directory / f"{stem}.pdf")
    plt.close(figure)
    return f"{stem}.png"


def plot_profiles(directory: Path, variants: Sequence[tuple[Variant, Profile]]) -> str:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for variant, profile in variants:
        latency_1 = profile.batch_latency_ms(1, "p50")
        left.scatter(latency_1, (variant.accuracy or 0) * 100, s=20 + variant.input_size_px)
        left.annotate(f"{variant.name}", (latency_1, (variant.accuracy or 0) * 100), fontsize=8, xytext=(4, 2), textcoords="offset points")
        sizes = profile.batch_sizes
        right.plot(sizes, [profile.batch_latency_ms(b, "p50") for b in sizes], marker="o", label=variant.name)
    left.set_xscale("log")
    left.set(xlabel="batch-1 latency, p50 (ms, log)", ylabel="top-1 accuracy (%)", title="accuracy vs latency (marker size: input px)")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set(xlabel="batch size", ylabel="batch latency, p50 (ms)", title="latency vs batch size")
    right.legend(fontsize=7)
    return _save(figure, directory, "profiles")


def plot_timeline(directory: Path, run: EdgeRun) -> str:
    names = sorted(run.records)
    figure, axes = plt.subplots(len(names), 1, figsize=(11, 2.3 * len(names)), sharex=True, squeeze=False)
    for axis, name in zip(axes[:, 0], names):
        records = run.records[name]
        times = np.array([r.captured_s for r in records])
        axis.plot(times, [r.link_mbps for r in records], color="0.6", label="link (trace)")
        axis.plot(times, [r.estimate_mbps for r in records], color="tab:blue", label="client estimate")
        axis.set_ylabel("Mbit/s")
        sizes = axis.twinx()
        sizes.step(times, [r.input_size for r in records], where="post", color="tab:orange", label="input px sent")
        missed = [r for r in records if r.outcome != "on_time"]
        sizes.scatter([r.captured_s for r in missed], [r.input_size for r in missed], color="red", marker="x", s=25, label="miss", zorder=3)
        sizes.set_ylabel("input px")
        sizes.set_ylim(0, max(r.input_size for r in records) * 1.1 + 1 if records else 1)
        axis.set_title(f"{name} ({run.setting})", fontsize=9)
        if name == names[0]:
            handles = axis.get_legend_handles_labels()[0] + sizes.get_legend_handles_labels()[0]
            axis.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper right", ncol=4)
    axes[-1, 0].set_xlabel("seconds")
    return _save(figure, directory, "timeline")


def plot_latency_cdf(directory: Path, runs: Sequence[EdgeRun], slo_ms: float) -> str:
    figure, axis = plt.subplots(figsize=(7, 4))
    for run in runs:
        latencies = np.sort([r.latency_ms for r in run.all_records if r.latency_ms is not None])
        if not len(latencies):
            continue
        line = axis.plot(latencies, np.arange(1, len(latencies) + 1) / len(latencies), label=run.setting)[0]
        p99 = float(np.percentile(latencies, 99))
        axis.axvline(p99, color=line.get_color(), ls=":", lw=1)
        axis.annotate(f"p99 {p99:.0f}", (p99, 0.02), color=line.get_color(), fontsize=7, rotation=90)
    axis.axvline(slo_ms, color="black", ls="--", lw=1.2, label=f"SLO {slo_ms:.0f} ms")
    axis.set(xlabel="end-to-end latency of answered frames (ms)", ylabel="CDF", title="latency CDF (dotted: P99)")
    axis.legend(fontsize=7)
    return _save(figure, directory, "latency_cdf")


def plot_accuracy_vs_misses(directory: Path, summaries: Sequence[dict]) -> str:
    figure, axis = plt.subplots(figsize=(6, 4))
    for summary in summaries:
        if summary["accuracy"] is None:
            continue
        colour = "tab:green" if summary["setting"] == "shoal" else "tab:gray"
        axis.scatter(summary["miss_rate"] * 100, summary["accuracy"] * 100, color=colour, s=40)
        axis.annotate(summary["setting"].replace("static:", ""), (summary["miss_rate"] * 100, summary["accuracy"] * 100), fontsize=8, xytext=(4, 2), textcoords="offset points")
    axis.axvline(1.0, color="red", ls=":", lw=1, label="1% misses")
    axis.set(xlabel="deadline-miss rate (%)", ylabel="accuracy of answered frames (%)", title="accuracy vs misses per setting")
    axis.legend(fontsize=7)
    return _save(figure, directory, "accuracy_vs_misses")


def write_edge_report(
    directory: Path, runs: Sequence[EdgeRun], *, variants: Sequence[tuple[Variant, Profile]], title: str, configuration: dict
) -> Path:
    """Write the figures, `results.json` and `index.html` into `directory`; returns the HTML path."""
    directory.mkdir(parents=True, exist_ok=True)
    summaries = [run.summary() for run in runs]
    images = []
    if variants:
        images.append(("Demo family profile", plot_profiles(directory, variants)))
    adaptive = next((run for run in runs if run.setting == "shoal"), None)
    if adaptive is not None:
        images.append(("Adaptation timeline (shoal)", plot_timeline(directory, adaptive)))
    images.append(("Latency CDF", plot_latency_cdf(directory, runs, runs[0].scenario.slo_ms)))
    images.append(("Accuracy vs deadline misses", plot_accuracy_vs_misses(directory, summaries)))
    (directory / "results.json").write_text(json.dumps({"configuration": configuration, "runs": summaries}, indent=2) + "\n")
    columns = ("setting", "frames", "answered", "accuracy", "miss_rate", "p50_ms", "p99_ms", "assignment_changes")
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(s[c]))}</td>" for c in columns) + "</tr>" for s in summaries)
    figures = "".join(f"<h2>{html.escape(caption)}</h2><img src='{name}' style='max-width:100%'>" for caption, name in images)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>Configuration: <code>{html.escape(json.dumps(configuration))}</code></p>
<table><tr>{''.join(f'<th>{c}</th>' for c in columns)}</tr>{rows}</table>{figures}
<p>Raw numbers: <a href="results.json">results.json</a>; every figure also as PDF.</p></body></html>"""
    path = directory / "index.html"
    path.write_text(page)
    return path
