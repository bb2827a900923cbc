"""The files and the screen summary of `shoal bench serve`: serve.json (everything), serve.csv
(one row per measured point), serve.png (goodput and p99 against offered load per variant)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["CSV_COLUMNS", "summary_text", "write_results"]

CSV_COLUMNS = (
    "variant_role", "model", "system", "kind", "mode", "rate_rps", "concurrency", "offered_rps", "num_requests",
    "throughput_rps", "goodput_rps", "shed_fraction", "drop_fraction", "error_fraction", "late_fraction",
    "p50_ms", "p95_ms", "p99_ms", "p99_from_send_ms", "server_p50_ms", "server_p99_ms", "mean_batch_size", "generator_cpu_fraction",
    "server_cpu_fraction", "generator_send_lag_p99_ms",
)  # fmt: skip


def _csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for role, variant in results["variants"].items():
        for system, outcome in variant["systems"].items():
            if system == "onnxruntime":
                rows.append({"variant_role": role, "model": variant["model"], "system": system, "kind": "ceiling",
                             "throughput_rps": outcome["images_per_s"], "goodput_rps": outcome["images_per_s"],
                             "p50_ms": outcome["batch1_p50_ms"]})  # fmt: skip
                continue
            for point in outcome.get("points", []):
                rows.append({"variant_role": role, "model": variant["model"], "system": system,
                             **{column: point.get(column) for column in CSV_COLUMNS[3:]}})  # fmt: skip
    return rows


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    roles = list(results["variants"])
    figure, axes = plt.subplots(2, len(roles), figsize=(6.5 * len(roles), 8), squeeze=False)
    colours = {"shoal": "tab:blue", "lean_http": "tab:orange", "ray_serve": "tab:green", "onnxruntime": "black"}
    for column, role in enumerate(roles):
        variant = results["variants"][role]
        goodput_axis, p99_axis = axes[0][column], axes[1][column]
        best_goodput_rps = max((p["goodput_rps"] for name, o in variant["systems"].items() if name != "onnxruntime" for p in o.get("points", [])), default=0.0)
        for system, outcome in variant["systems"].items():
            if system == "onnxruntime":
                label = f"bare ORT ceiling ({outcome['images_per_s']:.0f} img/s)"
                if outcome["images_per_s"] <= 4 * best_goodput_rps or best_goodput_rps <= 0:
                    goodput_axis.axhline(outcome["images_per_s"], color="black", linestyle="--", label=label)
                else:  # a light model's ceiling is far above any server: drawn, it flattens every curve
                    goodput_axis.plot([], [], " ", label=f"{label}, off the scale")
                continue
            points = sorted((p for p in outcome.get("points", []) if p["mode"] == "open"), key=lambda p: p["offered_rps"])
            if not points:
                continue
            offered = [p["offered_rps"] for p in points]
            goodput_axis.plot(offered, [p["goodput_rps"] for p in points], marker="o", color=colours[system], label=system)
            p99 = [p["p99_ms"] if p["p99_ms"] is not None else math.nan for p in points]
            p99_axis.plot(offered, p99, marker="o", color=colours[system], label=system)
        goodput_axis.set_title(f"{variant['model']} ({role}): goodput at SLO {results['slo_ms']:.0f} ms")
        goodput_axis.set_xlabel("offered load (req/s)")
        goodput_axis.set_ylabel("goodput (answers within SLO per s)")
        goodput_axis.set_xscale("log")
        goodput_axis.legend(fontsize=8)
        p99_axis.axhline(results["slo_ms"], color="red", linestyle=":", label="SLO")
        p99_axis.set_title("p99 latency of answered requests")
        p99_axis.set_xlabel("offered load (req/s)")
        p99_axis.set_ylabel("p99 (ms)")
        p99_axis.set_xscale("log")
        p99_axis.set_yscale("log")
        p99_axis.legend(fontsize=8)
        for axis in (goodput_axis, p99_axis):
            axis.xaxis.set_major_formatter(ScalarFormatter())
            axis.xaxis.set_minor_formatter(NullFormatter())
        p99_axis.yaxis.set_major_formatter(ScalarFormatter())
        p99_axis.yaxis.set_minor_formatter(NullFormatter())
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(results: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """serve.json, serve.csv and serve.png in out_dir; returns their paths (also set as results["files"])."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "serve.json", "csv": out_dir / "serve.csv", "png": out_dir / "serve.png"}
    results["files"] = {kind: str(path) for kind, path in paths.items()}
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(_csv_rows(results))
    _plot(results, paths["png"])
    return {kind: str(path) for kind, path in paths.items()}


def summary_text(results: dict[str, Any]) -> str:
    """One screen: per variant and system, peak goodput, overhead and the overload check."""
    lines = [f"shoal bench serve: SLO {results['slo_ms']:.0f} ms, {results['elapsed_s']} s, load average {results['machine']['load_average']}"]
    for role, variant in results["variants"].items():
        ceiling = variant["ceiling"]
        lines.append(f"\n{variant['model']} ({role}): bare ORT {ceiling['images_per_s_at_max_batch']:.0f} img/s at batch {ceiling['batch_size']}, "
                     f"{ceiling['images_per_s_at_batch_1']:.0f} img/s and p50 {ceiling['batch1_p50_ms']:.3f} ms at batch 1")  # fmt: skip
        lines.append(f"  {'system':<12}{'goodput/s':>11}{'at req/s':>10}{'p50 low':>9}{'overhead':>10}{'2x p99':>9}{'shed':>7}{'drop':>7}{'gen cpu':>9}")
        for system, outcome in variant["systems"].items():
            if system == "onnxruntime":
                continue
            if outcome.get("goodput_rps") is None:
                lines.append(f"  {system:<12}  not measured: {outcome.get('error', '').splitlines()[0] if outcome.get('error') else 'no answers'}")
                continue
            fmt = lambda value, spec: format("-", ">" + spec.lstrip(">").split(".")[0]) if value is None else format(value, spec)  # noqa: E731
            lines.append(
                f"  {system:<12}{outcome['goodput_rps']:>11.0f}{outcome['peak_offered_rps']:>10.0f}{fmt(outcome['p50_low_load_ms'], '>9.2f')}"
                f"{fmt(outcome['overhead_p50_ms'], '>10.2f')}{fmt(outcome['overload_p99_ms'], '>9.1f')}"
                f"{fmt(outcome['overload_shed_fraction'], '>7.0%')}{fmt(outcome['overload_drop_fraction'], '>7.0%')}"
                f"{fmt(outcome['generator_cpu_fraction_max'], '>9.0%')}"
            )
        ratios = {k: variant[k] for k in ("ratio_vs_ray_serve", "ratio_vs_lean", "ratio_vs_ceiling", "overhead_p50_ms")}
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
        for name, met in variant["targets"].items():
            lines.append(f"  target {name}: {'n/a' if met is None else ('met' if met else 'MISSED')}")
    if results.get("transport"):
        lines.append("\nbatch to worker, round trip (µs p50): shared memory vs pickle")
        for row in results["transport"]:
            lines.append(f"  {row['variant']:<20} batch {row['batch_size']:>3}: {row['shared_memory_us_p50']:>8.0f} vs {row['pickle_us_p50']:>8.0f}"
                         f"  (pickle {row['pickle_over_shared_memory']}x)")  # fmt: skip
    return "\n".join(lines)
