"""Random edge scheduling instances, reproducing the Jellyfish simulator's generators.

The original (vuhpdc/jellyfish, src/simulation/env.py, with src/utils.py) draws, per client,
an SLO from {75, 100, 150} ms, a frame rate from {10, 15, 25} fps and a bandwidth uniform in
[7.5, 50] Mbit/s; per GPU an initial model uniformly at random; and, for the synthetic model
profiles, 16 YOLOv4 input sizes r = 128, 160, ..., 608 with

    accuracy(r)       = 0.988 - 4.469 * exp(-r / 200)                  ("JOINT", INFOCOM'20)
    latency_1(r)      = (0.08315 r^2 - 0.04463 r + 0.03757) / 1000     ms
    latency(r, b)     = 0.75 * latency_1(r) + 0.25 * latency_1(r) * (b - 1),  b = 1..8
    frame_kbits(r)    = (r * r * 3 / 1024) / jpeg_q90_ratio(r) * 8     (DDS traffic videos)

Two corrections, both documented where they apply:

* The accuracy curve was fitted for resolutions 320..1472 and is negative below r ~ 299
  (5 of the 16 sizes). An accuracy must be in [0, 1]; it is clipped at `min_accuracy`
  (default 0.01), so those variants stay usable and serving a client always adds value.
* The original divides kbits (of 1024 bit) by Mbit/s * 1024; `request_kbits` here is in
  SI kilobits with `upload_ms = kbits / Mbit/s`, so the frame sizes are scaled by 1000/1024
  to keep the original's network times exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from shoal.planner.edge.model import EdgeClient, EdgeInstance, EdgeSettings, EdgeVariant, EdgeWorker

__all__ = [
    "JPEG_Q90_MIN_COMPRESSION_RATIO",
    "SLO_CHOICES_MS",
    "FPS_CHOICES",
    "BANDWIDTH_RANGE_MBPS",
    "jellyfish_frame_kbits",
    "jellyfish_synthetic_variants",
    "random_clients",
    "random_instance",
]

# src/utils.py compute_frame_size._COMPRESSION_RATIO (also anchors/jellyfish/derived/frame_size_jpeg_compression.csv)
JPEG_Q90_MIN_COMPRESSION_RATIO: dict[int, float] = {
    128: 4.78, 160: 5.148, 192: 5.365, 224: 5.66, 256: 5.782, 288: 6.133, 320: 6.431, 352: 6.556,
    384: 6.781, 416: 6.953, 448: 7.158, 480: 7.421, 512: 7.574, 544: 7.739, 576: 7.968, 608: 8.131,
    640: 8.547,
}
SLO_CHOICES_MS = (75.0, 100.0, 150.0)
FPS_CHOICES = (10.0, 15.0, 25.0)
BANDWIDTH_RANGE_MBPS = (7.5, 50.0)
_KBITS_1024_TO_SI = 1000.0 / 1024.0


def jellyfish_frame_kbits(input_size: int) -> float:
    """The original's assumed JPEG frame size, in its own kbits (1024 bit)."""
    ratio = JPEG_Q90_MIN_COMPRESSION_RATIO[input_size]
    return (input_size * input_size * 3 / 1024) / ratio * 8


def _accuracy(input_size: int) -> float:
    return 0.988 - 4.469 * math.exp(-input_size / 200)


def _latency_batch_one_ms(input_size: int) -> float:
    return (0.08315 * input_size**2 - 0.04463 * input_size + 0.03757) / 1000.0


def jellyfish_synthetic_variants(
    num_variants: int = 16, max_batch_size: int = 8, *, min_accuracy: float = 0.01
) -> tuple[EdgeVariant, ...]:
    """The 16 synthetic YOLOv4 profiles of the original's simulator (see the module docstring)."""
    sizes = sorted(JPEG_Q90_MIN_COMPRESSION_RATIO)[:num_variants]
    variants = []
    for size in sizes:
        first = _latency_batch_one_ms(size)
        latency = {b: 0.75 * first + 0.25 * first * (b - 1) for b in range(1, max_batch_size + 1)}
        variants.append(
            EdgeVariant(
                name=f"yolov4-{size}",
                accuracy=min(1.0, max(min_accuracy, _accuracy(size))),
                input_size=size,
                request_kbits=jellyfish_frame_kbits(size) * _KBITS_1024_TO_SI,
                latency_ms=latency,
            )
        )
    return tuple(variants)


def random_clients(
    rng: np.random.Generator,
    num_clients: int,
    *,
    slo_choices_ms: Sequence[float] = SLO_CHOICES_MS,
    fps_choices: Sequence[float] = FPS_CHOICES,
    bandwidth_range_mbps: tuple[float, float] = BANDWIDTH_RANGE_MBPS,
) -> tuple[EdgeClient, ...]:
    width = len(str(max(num_clients - 1, 0)))
    return tuple(
        EdgeClient(
            name=f"client-{i:0{width}d}",
            slo_ms=float(rng.choice(slo_choices_ms)),
            fps=float(rng.choice(fps_choices)),
            bandwidth_mbps=float(rng.uniform(*bandwidth_range_mbps)),
        )
        for i in range(num_clients)
    )


def random_instance(
    rng: np.random.Generator,
    variants: Sequence[EdgeVariant],
    num_workers: int,
    num_clients: int,
    *,
    device: str = "cpu",
    settings: EdgeSettings = EdgeSettings(),
    **client_options,
) -> EdgeInstance:
    """Clients as in the original simulator; every worker starts with a random variant loaded."""
    width = len(str(max(num_workers - 1, 0)))
    workers = tuple(
        EdgeWorker(name=f"worker-{i:0{width}d}", device=device, loaded_variant=variants[int(rng.integers(len(variants)))].name)
        for i in range(num_workers)
    )
    clients = random_clients(rng, num_clients, **client_options)
    return EdgeInstance(variants=tuple(variants), workers=workers, clients=clients, settings=settings)
