"""Per-variant inference statistics in the shape of Triton's statistics extension.

`GET /v2/models[/{model}]/stats` and gRPC `ModelStatistics` answer from these, so that tools
written for Triton (`tritonclient`'s `get_inference_statistics`, dashboards built on it) read
shoal unchanged. Prometheus (`/metrics`) has the same events as histograms; this keeps the
exact cumulative counts and durations the extension reports, and per batch size, which the
histograms' buckets do not. Plain integers updated on the event loop: a few of them per
request, cheaper than one more Prometheus call.

Every field Triton sends is sent, so that code reading any of them works over HTTP as over
gRPC; two carry no time: `compute_input` and `compute_output` (shoal does not time the copies
through shared memory apart from the batch; counted like Triton's, with 0 ns), and the response
cache's (shoal has none: zero).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Duration", "VariantStatistics"]


@dataclass
class Duration:
    """A count and the cumulative nanoseconds of what was counted (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, ms: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(ms * 1_000_000)

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class VariantStatistics:
    """One served variant's counts since the server started.

    As in Triton: `inference_count` counts the items of answered requests (a request of 4 images
    is 4), `execution_count` batches run; `success`, `fail`, `queue` and `compute_infer` count
    requests (`compute_infer` charges an answered request its batch's compute time), and
    `batches[size]` counts batches of that size with their compute time. `last_inference` is
    when a batch last ran (Unix ms)."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)

    def batch_ran(self, size: int, compute_ms: float) -> None:
        self.last_inference_ms = int(time.time() * 1000)
        self.execution_count += 1
        by_size = self.batches.get(size)
        if by_size is None:
            by_size = self.batches[size] = Duration()
        by_size.add(compute_ms)

    def answered(self, items: int, queue_ms: float, compute_ms: float, total_ms: float) -> None:
        self.inference_count += items
        self.success.add(total_ms)
        self.queue.add(queue_ms)
        self.compute_infer.add(compute_ms)

    def failed(self, elapsed_ms: float) -> None:
        self.fail.add(elapsed_ms)

    def as_json(self, name: str) -> dict:
        """One entry of Triton's `model_stats` list."""
        return {
            "name": name,
            "version": "1",
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_json(),
                "fail": self.fail.as_json(),
                "queue": self.queue.as_json(),
                "compute_input": {"count": self.compute_infer.count, "ns": 0},
                "compute_infer": self.compute_infer.as_json(),
                "compute_output": {"count": self.compute_infer.count, "ns": 0},
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {"batch_size": size, "compute_input": {"count": self.batches[size].count, "ns": 0},
                 "compute_infer": self.batches[size].as_json(), "compute_output": {"count": self.batches[size].count, "ns": 0}}
                for size in sorted(self.batches)
            ],
        }  # fmt: skip
