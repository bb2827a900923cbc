"""The typed data model shared by every part of shoal.

These are pydantic models because they cross file and network boundaries (YAML in the model
repository, JSON profiles, plans printed by the CLI): validation happens once, where data
enters, and every unit is part of a field name.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "NAME_PATTERN",
    "Device",
    "TensorSpec",
    "Family",
    "Variant",
    "LatencyStats",
    "Profile",
]

# Names become directory names in the repository and path segments in URLs, so they are kept
# to a conservative alphabet; this is also what rules out path traversal.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)


def check_name(value: str, what: str) -> str:
    """Return value if it is a safe name, else raise ValueError naming the rule."""
    # fullmatch: with match, '$' also matches before a final newline ("v3\n" passed).
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not a valid name: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit and without '..'"
        )
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # files are JSON/YAML: no Infinity/NaN to carry


class Device(_Model):
    """A device that runs ONNX Runtime sessions, named as users write it: `cpu`, `cuda:0`."""

    name: str
    kind: Literal["cpu", "cuda"]
    index: int = 0
    description: str = ""

    @classmethod
    def parse(cls, name: str) -> "Device":
        text = name.strip().lower()
        if text == "cpu":
            return cls(name="cpu", kind="cpu")
        match = re.fullmatch(r"(?:cuda|gpu)(?::(\d+))?", text)
        if match:
            index = int(match.group(1) or 0)
            return cls(name=f"cuda:{index}", kind="cuda", index=index)
        raise ValueError(f"device {name!r} is not understood: use 'cpu' or 'cuda:N'")

    @property
    def file_stem(self) -> str:
        """The device name as a file name (`cuda:0` -> `cuda-0`)."""
        return self.name.replace(":", "-")

    @property
    def onnxruntime_providers(self) -> list:
        """Execution providers for a session on this device, most preferred first."""
        if self.kind == "cuda":
            return [("CUDAExecutionProvider", {"device_id": self.index}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]


class TensorSpec(_Model):
    """Name, element type and shape of a model input or output; -1 marks a dynamic axis."""

    name: str
    dtype: Literal["float32", "float16", "int64", "int32", "uint8"] = "float32"
    shape: tuple[int, ...]


class Family(_Model):
    """A task served by several interchangeable variants that share one input and output."""

    name: str
    task: Literal["image-classification"] = "image-classification"
    metric: Literal["top1_accuracy"] = "top1_accuracy"
    description: str = ""
    input_name: str = "images"
    input_layout: Literal["NCHW"] = "NCHW"
    input_channels: int = Field(3, ge=1)
    output_name: str = "logits"
    num_classes: int = Field(ge=2)
    class_names: list[str] = Field(default_factory=list)
    source_image_px: int = Field(ge=8, description="side of the full-resolution frames clients hold")
    validation_file: str | None = Field(
        "validation.npz", description="npz with uint8 `images` (NCHW) and int64 `labels`"
    )

    _check_name = field_validator("name")(lambda value: check_name(value, "family name"))

    @model_validator(mode="after")
    def _class_names_match(self) -> "Family":
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} entries but num_classes is {self.num_classes}"
            )
        return self


class Variant(_Model):
    """One model of a family at one accuracy / cost point."""

    name: str
    family: str
    input_size_px: int = Field(ge=1, description="side of the square image the model takes")
    accuracy: float | None = Field(None, ge=0.0, le=1.0, description="top-1 on the validation set")
    parameter_count: int = Field(0, ge=0)
    multiply_adds: int = Field(0, ge=0, description="per image, 0 when unknown")
    model_file: str = "model.onnx"
    preprocessing: dict[str, str | float | int] = Field(
        default_factory=lambda: {"resize": "area", "scale": 1.0 / 255.0}
    )
    description: str = ""

    _check_name = field_validator("name")(lambda value: check_name(value, "variant name"))
    _check_family = field_validator("family")(lambda value: check_name(value, "family name"))

    def request_bytes(self, channels: int = 3) -> int:
        """Bytes of one float32 input tensor at this variant's input size."""
        return channels * self.input_size_px * self.input_size_px * 4


class LatencyStats(_Model):
    """Latency of one batch size on one device: summary percentiles plus the raw samples."""

    batch_size: int = Field(ge=1)
    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)
    mean_ms: float = Field(ge=0)
    samples_ms: list[float] = Field(default_factory=list)

    @property
    def throughput_rps(self) -> float:
        """Items per second when batches of this size run back to back at the mean latency."""
        return 0.0 if self.mean_ms <= 0 else self.batch_size * 1000.0 / self.mean_ms


class Profile(_Model):
    """What the profiler measured for one variant on one device."""

    family: str
    variant: str
    device: str
    batches: dict[int, LatencyStats]
    load_time_ms: float = Field(ge=0, description="session creation and first run")
    memory_bytes: int = Field(0, ge=0, description="resident memory added by loading the session")
    accuracy: float | None = Field(None, ge=0.0, le=1.0)
    num_validation_images: int = Field(0, ge=0)
    onnxruntime_version: str = ""
    intra_op_threads: int = Field(0, ge=0)
    measured_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    @model_validator(mode="after")
    def _keys_match(self) -> "Profile":
        for batch_size, stats in self.batches.items():
            if batch_size != stats.batch_size:
                raise ValueError(f"batches[{batch_size}] holds stats for batch size {stats.batch_size}")
        if not self.batches:
            raise ValueError("a profile needs at least one batch size")
        return self

    @property
    def batch_sizes(self) -> list[int]:
        return sorted(self.batches)

    def monotone_latency_ms(self, percentile: Literal["p50", "p95", "p99", "mean"] = "p95") -> dict[int, float]:
        """Latency per batch size made non-decreasing in batch size (a running maximum).

        Measured latencies can dip at a larger batch (cache effects, noise); a scheduler that
        trusted the dip would pick a batch size that is slower in practice. The raw numbers stay
        in `batches`.
        """
        result: dict[int, float] = {}
        running = 0.0
        for batch_size in self.batch_sizes:
            running = max(running, getattr(self.batches[batch_size], f"{percentile}_ms"))
            result[batch_size] = running
        return result

    def batch_latency_ms(self, batch_size: int, percentile: Literal["p50", "p95", "p99", "mean"] = "p95") -> float:
        """Predicted latency of a batch of any size: monotone view, linear between measured sizes.

        Beyond the largest measured size the last per-item slope is extended, which is what a
        compute-bound model does once batching no longer amortises overhead.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        table = self.monotone_latency_ms(percentile)
        sizes = sorted(table)
        if batch_size in table:
            return table[batch_size]
        if batch_size < sizes[0]:
            return table[sizes[0]]
        for lower, upper in zip(sizes, sizes[1:]):
            if lower < batch_size < upper:
                fraction = (batch_size - lower) / (upper - lower)
                return table[lower] + fraction * (table[upper] - table[lower])
        last = sizes[-1]
        if len(sizes) == 1:
            return table[last] * batch_size / last
        previous = sizes[-2]
        slope = (table[last] - table[previous]) / (last - previous)
        return table[last] + slope * (batch_size - last)

    def peak_throughput_rps(self) -> float:
        return max(stats.throughput_rps for stats in self.batches.values())
