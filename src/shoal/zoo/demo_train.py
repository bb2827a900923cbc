"""Models, training and ONNX export of the built-in demo family.

The family is a set of small VGG-style CNNs (3x3 conv + batch-norm + ReLU blocks, 2x2 max-pool
between stages, global average pool, one linear layer) that differ in input size, width and
depth. Each variant reads the 128 px demo images (see :mod:`shoal.zoo.demo_dataset`) resized
to its own input size with :func:`shoal.zoo.preprocess.resize_images` and scaled to [0, 1] --
exactly what serving does -- so a smaller input really loses the fine textures that separate
some classes, and a narrower or shallower network is faster but less accurate.

PyTorch is needed only to *train* (``pip install 'shoal[build]'``); it is imported lazily, so
this module imports without it. The ONNX file is written directly from the trained weights with
the ``onnx`` helper API (batch-norm folded into the convolutions), not with torch's exporter:
the result is one self-contained file with a fixed, simple graph (Conv, Relu, MaxPool,
GlobalAveragePool, Flatten, Gemm), input ``images`` [batch, 3, S, S] and output ``logits``
[batch, 10], both float32, whatever the installed torch version.

Measured on the project's 2-core CPU machine (seed 0, 4,000 training and 1,000 validation
images; latency = ONNX Runtime CPUExecutionProvider, intra-op threads 2, batch 1, median of
1,000-2,000 runs after warm-up, on a quiet machine):

    variant      input  MACs     params   top-1   batch-1 latency
    tiny-16      16     0.2 M    6.4 k    48.6 %  0.02 ms
    tiny-32      32     0.8 M    6.4 k    59.1 %  0.03 ms
    small-32     32     2.8 M    24 k     65.4 %  0.04 ms
    small-48     48     8.3 M    80 k     70.4 %  0.09 ms
    small-64     64     14.7 M   80 k     68.5 %  0.15 ms   (dominated: 48 px aliasing helps)
    medium-96    96     37.2 M   191 k    73.1 %  0.37 ms
    large-128    128    73.1 M   246 k    83.8 %  0.68 ms
    xlarge-128   128    250 M    760 k    92.9 %  2.3-2.9 ms

The whole build (dataset, training, export, validation) takes ~3.4 minutes there: two worker
processes with one torch thread each (costliest variant first), which is faster than one
process with two threads and, unlike it, degrades gracefully when other programs share the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shoal.core.errors import ShoalError
from shoal.zoo.demo_dataset import (
    CLASS_NAMES,
    NUM_CLASSES,
    SOURCE_IMAGE_PX,
    make_demo_images,
    to_float,
)
from shoal.zoo.preprocess import resize_images

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEMO_TRAIN_IMAGES",
    "DEMO_VALIDATION_IMAGES",
    "DEMO_VARIANTS",
    "DEMO_VARIANTS_QUICK",
    "DemoBuild",
    "DemoBuildResult",
    "DemoVariantResult",
    "DemoVariantSpec",
    "ONNX_INPUT_NAME",
    "ONNX_OPSET",
    "ONNX_OUTPUT_NAME",
    "TorchUnavailableError",
    "TrainedModel",
    "build_demo_models",
    "count_multiply_adds",
    "count_parameters",
    "default_num_threads",
    "evaluate_onnx",
    "export_onnx",
    "train_and_export",
    "train_variant",
]

ONNX_INPUT_NAME = "images"
ONNX_OUTPUT_NAME = "logits"
ONNX_OPSET = 17
_BN_EPS = 1e-5
_BATCH_SIZE = 32  # trains fastest per image on the project's 2-core machines
_MIN_ONE_CYCLE_STEPS = 12
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TORCH_HINT = "PyTorch is needed to build the demo family: pip install 'shoal[build]'"


class TorchUnavailableError(ShoalError):
    """Training the demo family was requested but PyTorch is not installed."""


# ----------------------------------------------------------------------------------------------
# variants


@dataclass(frozen=True)
class DemoVariantSpec:
    """One demo variant: a VGG-style CNN reading ``input_size_px`` square RGB images.

    ``channels[i]`` is the width of stage ``i``; every stage has ``convs_per_stage`` 3x3
    convolutions and all but the last end in a 2x2 max-pool. ``epochs`` and ``learning_rate``
    are what :func:`build_demo_models` trains it with.
    """

    name: str
    input_size_px: int
    channels: tuple[int, ...]
    convs_per_stage: int = 2
    epochs: float = 4
    learning_rate: float = 3e-3

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.fullmatch(self.name):
            raise ValueError(
                f"variant name {self.name!r} must match {_NAME_PATTERN.pattern} (a repository name)"
            )
        if not 1 <= self.input_size_px <= SOURCE_IMAGE_PX:
            raise ValueError(
                f"variant {self.name!r}: input_size_px must be in [1, {SOURCE_IMAGE_PX}], "
                f"got {self.input_size_px}"
            )
        if not self.epochs > 0 or not self.learning_rate > 0:
            raise ValueError(f"variant {self.name!r}: epochs and learning_rate must be > 0")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"variant {self.name!r}: channels must be positive, got {self.channels}")
        if self.convs_per_stage < 1:
            raise ValueError(f"variant {self.name!r}: convs_per_stage must be >= 1")
        if self.input_size_px < 2 ** (len(self.channels) - 1):
            raise ValueError(f"variant {self.name!r}: input too small for {len(self.channels)} stages")

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES


DEMO_VARIANTS: tuple[DemoVariantSpec, ...] = (
    DemoVariantSpec("tiny-16", 16, (8, 16, 32), convs_per_stage=1, epochs=6, learning_rate=5e-3),
    DemoVariantSpec("tiny-32", 32, (8, 16, 32), convs_per_stage=1, epochs=6, learning_rate=5e-3),
    DemoVariantSpec("small-32", 32, (16, 32, 64), convs_per_stage=1, epochs=5),
    DemoVariantSpec("small-48", 48, (16, 32, 64, 96), convs_per_stage=1, epochs=4),
    DemoVariantSpec("small-64", 64, (16, 32, 64, 96), convs_per_stage=1, epochs=4),
    DemoVariantSpec("medium-96", 96, (16, 32, 64, 96, 128), convs_per_stage=1, epochs=3),
    DemoVariantSpec("large-128", 128, (16, 32, 64, 128, 128), convs_per_stage=1, epochs=2),
    DemoVariantSpec("xlarge-128", 128, (32, 64, 128, 192, 256), convs_per_stage=1, epochs=2),
)

DEMO_VARIANTS_QUICK: tuple[DemoVariantSpec, ...] = (
    DemoVariantSpec("quick-16", 16, (16, 32), convs_per_stage=1, epochs=6, learning_rate=2e-2),
    DemoVariantSpec("quick-32", 32, (8, 16, 32), convs_per_stage=1, epochs=6, learning_rate=2e-2),
)


def _layer_shapes(spec: DemoVariantSpec) -> list[tuple[str, int, int, int]]:
    """(kind, in_channels, out_channels, spatial px) of every conv and the final linear layer."""
    shapes: list[tuple[str, int, int, int]] = []
    size, in_channels = spec.input_size_px, 3
    for stage, width in enumerate(spec.channels):
        for _ in range(spec.convs_per_stage):
            shapes.append(("conv", in_channels, width, size))
            in_channels = width
        if stage < len(spec.channels) - 1:
            size //= 2
    shapes.append(("linear", in_channels, NUM_CLASSES, 1))
    return shapes


def count_multiply_adds(spec: DemoVariantSpec) -> int:
    """Multiply-accumulates per image of the convolutions and the linear layer (analytic)."""
    total = 0
    for kind, c_in, c_out, size in _layer_shapes(spec):
        total += size * size * c_out * c_in * (9 if kind == "conv" else 1)
    return total


def count_parameters(spec: DemoVariantSpec) -> int:
    """Parameters of the exported model (batch-norm folded: every conv has weights + bias)."""
    total = 0
    for kind, c_in, c_out, _ in _layer_shapes(spec):
        total += c_out * c_in * (9 if kind == "conv" else 1) + c_out
    return total


# ----------------------------------------------------------------------------------------------
# torch side (lazy)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as error:  # pragma: no cover - exercised only without torch
        raise TorchUnavailableError(_TORCH_HINT) from error
    return torch


def _build_module(spec: DemoVariantSpec) -> "torch.nn.Module":
    torch = _import_torch()
    nn = torch.nn
    layers: list[Any] = []
    in_channels = 3
    for stage, width in enumerate(spec.channels):
        for _ in range(spec.convs_per_stage):
            layers += [
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width, eps=_BN_EPS),
                nn.ReLU(inplace=True),
            ]
            in_channels = width
        if stage < len(spec.channels) - 1:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, NUM_CLASSES)]
    return nn.Sequential(*layers)


@dataclass
class TrainedModel:
    """A trained variant: its spec, the torch module (eval mode) and how long training took."""

    spec: DemoVariantSpec
    module: Any
    train_seconds: float

    def predict_logits(self, images_float: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits from torch for float32 images already at the variant's input size."""
        torch = _import_torch()
        outputs = []
        self.module.eval()
        with torch.no_grad():
            for start in range(0, images_float.shape[0], batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images_float[start : start + batch_size]))
                outputs.append(self.module(batch.contiguous(memory_format=torch.channels_last)).numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, NUM_CLASSES), np.float32)


# Below this many multiply-adds per image, a second intra-op thread costs more in
# synchronisation than it gains (and on a loaded machine it can be 10-30x slower).
_SINGLE_THREAD_BELOW_MACS = 20_000_000


def default_num_threads(spec: DemoVariantSpec) -> int:
    """Intra-op threads for training ``spec`` in this process: 1 for small models, else 2."""
    if count_multiply_adds(spec) < _SINGLE_THREAD_BELOW_MACS:
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def _prepare(images_uint8: np.ndarray, size: int) -> np.ndarray:
    """uint8 128 px NCHW -> float32 [0, 1] at ``size`` px, exactly as serving does it."""
    return resize_images(to_float(images_uint8), size)


def _prepare_all(images_uint8: np.ndarray, size: int, chunk: int = 500) -> np.ndarray:
    """``_prepare`` over a whole split, in chunks to bound the temporary memory."""
    out = np.empty((images_uint8.shape[0], 3, size, size), dtype=np.float32)
    for start in range(0, images_uint8.shape[0], chunk):
        out[start : start + chunk] = _prepare(images_uint8[start : start + chunk], size)
    return out


def train_variant(
    spec: DemoVariantSpec,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: float,
    seed: int,
    progress: Callable[[float], None] | None = None,
    learning_rate: float | None = None,
    num_threads: int | None = None,
) -> TrainedModel:
    """Train ``spec`` on 128 px uint8 images (resized to its input size) for ``epochs`` epochs.

    ``epochs`` may be fractional (1.5 = one and a half passes over the data). AdamW with a
    one-cycle learning-rate schedule, batch size 32, random horizontal flips; the images are
    resized with ``resize_images`` and scaled to [0, 1] exactly as serving does. Seeded: the
    same arguments give the same weights. ``progress`` gets the completed fraction in [0, 1].
    ``num_threads`` (torch intra-op threads) defaults to :func:`default_num_threads`; torch's
    previous setting is restored afterwards. Denormals are flushed to zero (``torch``'s global
    ``set_flush_denormal(True)``), which makes training ~15x faster on some CPUs.
    """
    torch = _import_torch()
    images_uint8 = np.asarray(images_uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if images_uint8.ndim != 4 or images_uint8.shape[1:] != (3, SOURCE_IMAGE_PX, SOURCE_IMAGE_PX):
        raise ValueError(f"expected uint8 images of shape (N, 3, 128, 128), got {images_uint8.shape}")
    if images_uint8.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got dtype {images_uint8.dtype}")
    if labels.shape != (images_uint8.shape[0],) or images_uint8.shape[0] == 0:
        raise ValueError(f"expected {images_uint8.shape[0]} (> 0) labels, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"labels must lie in [0, {NUM_CLASSES - 1}]")
    if not epochs > 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    previous_threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    torch.set_num_threads(num_threads or default_num_threads(spec))
    try:
        return _train(torch, spec, images_uint8, labels, epochs, seed, progress, learning_rate)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    torch: Any,
    spec: DemoVariantSpec,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    epochs: float,
    seed: int,
    progress: Callable[[float], None] | None,
    learning_rate: float | None,
) -> TrainedModel:
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    size = spec.input_size_px
    # Smaller inputs are resized once for the whole split; 128 px ones are converted per batch.
    resized = _prepare_all(images_uint8, size) if size != SOURCE_IMAGE_PX else None
    module = _build_module(spec).to(memory_format=torch.channels_last)
    module.train()
    count = images_uint8.shape[0]
    steps_per_epoch = max(1, math.ceil(count / _BATCH_SIZE))
    total_steps = max(1, round(epochs * steps_per_epoch))
    peak = spec.learning_rate if learning_rate is None else learning_rate
    optimizer = torch.optim.AdamW(module.parameters(), lr=peak, weight_decay=5e-4)
    if total_steps >= _MIN_ONE_CYCLE_STEPS:
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peak, total_steps=total_steps, pct_start=0.25
        )
    else:  # too few steps for warm-up and annealing phases (tiny test runs): constant rate
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    loss_fn = torch.nn.CrossEntropyLoss()
    step = 0
    while step < total_steps:  # epochs; a fractional last epoch sees a random subset
        order = rng.permutation(count)
        flips = rng.random(count) < 0.5
        for start in range(0, count, _BATCH_SIZE):
            if step >= total_steps:
                break
            index = np.sort(order[start : start + _BATCH_SIZE])
            batch = resized[index] if resized is not None else to_float(images_uint8[index])
            flip = flips[index]
            batch[flip] = batch[flip, :, :, ::-1]
            inputs = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            targets = torch.from_numpy(labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(module(inputs), targets)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress is not None:
                progress(step / total_steps)
    module.eval()
    return TrainedModel(spec=spec, module=module, train_seconds=time.perf_counter() - started)


# ----------------------------------------------------------------------------------------------
# ONNX export (numpy + onnx only, from the trained weights)


def _folded_layers(trained: TrainedModel) -> list[tuple[str, np.ndarray | None, np.ndarray | None]]:
    """The network as ("conv", W, b) with batch-norm folded, ("pool", None, None), ("linear", W, b)."""
    torch = _import_torch()
    nn = torch.nn
    layers: list[tuple[str, np.ndarray | None, np.ndarray | None]] = []
    modules = list(trained.module.children())
    with torch.no_grad():
        for position, layer in enumerate(modules):
            if isinstance(layer, nn.Conv2d):
                norm = modules[position + 1]
                if not isinstance(norm, nn.BatchNorm2d):  # pragma: no cover - fixed architecture
                    raise ShoalError("a demo convolution must be followed by batch-norm")
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                weight = layer.weight * scale[:, None, None, None]
                bias = norm.bias - norm.running_mean * scale
                if layer.bias is not None:  # pragma: no cover - the demo convs have no bias
                    bias = bias + layer.bias * scale
                layers.append(("conv", _to_numpy(weight), _to_numpy(bias)))
            elif isinstance(layer, nn.MaxPool2d):
                layers.append(("pool", None, None))
            elif isinstance(layer, nn.Linear):
                layers.append(("linear", _to_numpy(layer.weight), _to_numpy(layer.bias)))
    return layers


def _to_numpy(tensor: Any) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().contiguous().numpy(), dtype=np.float32)


def export_onnx(trained: TrainedModel, path: Path) -> None:
    """Write ``trained`` as one self-contained ONNX file (opset 17) and check it.

    Input ``images``: float32 [batch, 3, S, S], already resized with ``resize_images`` and
    scaled to [0, 1]; output ``logits``: float32 [batch, 10]. The batch axis is dynamic.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spec = trained.spec
    size = spec.input_size_px
    nodes: list[Any] = []
    initializers: list[Any] = []
    current = ONNX_INPUT_NAME
    for index, (kind, weight, bias) in enumerate(_folded_layers(trained)):
        if kind == "conv":
            assert weight is not None and bias is not None
            w_name, b_name = f"conv{index}.weight", f"conv{index}.bias"
            initializers += [numpy_helper.from_array(weight, w_name), numpy_helper.from_array(bias, b_name)]
            nodes.append(
                helper.make_node(
                    "Conv", [current, w_name, b_name], [f"conv{index}"], name=f"conv{index}",
                    kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
                )
            )
            nodes.append(helper.make_node("Relu", [f"conv{index}"], [f"relu{index}"], name=f"relu{index}"))
            current = f"relu{index}"
        elif kind == "pool":
            nodes.append(
                helper.make_node(
                    "MaxPool", [current], [f"pool{index}"], name=f"pool{index}",
                    kernel_shape=[2, 2], strides=[2, 2],
                )
            )
            current = f"pool{index}"
        else:
            assert weight is not None and bias is not None
            nodes.append(helper.make_node("GlobalAveragePool", [current], ["gap"], name="gap"))
            nodes.append(helper.make_node("Flatten", ["gap"], ["features"], name="flatten", axis=1))
            initializers += [numpy_helper.from_array(weight, "fc.weight"), numpy_helper.from_array(bias, "fc.bias")]
            nodes.append(
                helper.make_node(
                    "Gemm", ["features", "fc.weight", "fc.bias"], [ONNX_OUTPUT_NAME], name="fc", transB=1
                )
            )
    graph = helper.make_graph(
        nodes,
        f"shoal-demo-{spec.name}",
        [helper.make_tensor_value_info(ONNX_INPUT_NAME, TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(ONNX_OUTPUT_NAME, TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="shoal",
        doc_string=f"shoal demo family variant {spec.name}: {spec.input_size_px} px, channels {spec.channels}",
    )
    model.ir_version = 8  # the IR version of opset 17; readable by every supported onnxruntime
    helper.set_model_props(
        model,
        {
            "shoal.variant": spec.name,
            "shoal.input_size_px": str(spec.input_size_px),
            "shoal.class_names": ",".join(CLASS_NAMES),
            "shoal.preprocess": "resize_images(area) to input_size_px, then uint8/255",
        },
    )
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(model.SerializeToString())
    temporary.replace(path)


def _session(path: Path, num_threads: int = 2) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def evaluate_onnx(
    path: Path,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    input_size_px: int,
    *,
    batch_size: int = 100,
    num_threads: int = 2,
) -> float:
    """Top-1 accuracy of the ONNX file on 128 px uint8 images, preprocessed as serving does."""
    session = _session(path, num_threads)
    labels = np.asarray(labels)
    correct = 0
    for start in range(0, images_uint8.shape[0], batch_size):
        batch = _prepare(images_uint8[start : start + batch_size], input_size_px)
        logits = session.run([ONNX_OUTPUT_NAME], {ONNX_INPUT_NAME: batch})[0]
        correct += int((logits.argmax(axis=1) == labels[start : start + batch_size]).sum())
    return correct / max(1, images_uint8.shape[0])


# ----------------------------------------------------------------------------------------------
# one variant, and the whole family


@dataclass(frozen=True)
class DemoBuildResult:
    """What :func:`train_and_export` reports about one exported variant."""

    parameter_count: int
    multiply_adds: int
    train_seconds: float


def train_and_export(
    spec: DemoVariantSpec,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    path: Path,
    *,
    epochs: float | None = None,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
    num_threads: int | None = None,
) -> DemoBuildResult:
    """Train ``spec`` (``epochs`` defaults to ``spec.epochs``) and export it to ``path``."""
    trained = train_variant(
        spec, images_uint8, labels, epochs=spec.epochs if epochs is None else epochs, seed=seed,
        progress=progress, num_threads=num_threads,
    )
    export_onnx(trained, path)
    return DemoBuildResult(
        parameter_count=count_parameters(spec),
        multiply_adds=count_multiply_adds(spec),
        train_seconds=trained.train_seconds,
    )


@dataclass(frozen=True)
class DemoVariantResult:
    """One built variant: where its ONNX file is and how it scored on the validation split."""

    name: str
    input_size_px: int
    onnx_path: Path
    accuracy: float
    parameter_count: int
    multiply_adds: int
    train_seconds: float
    epochs: float


@dataclass(frozen=True)
class DemoBuild:
    """The built demo family: its variants, validation split (uint8, 128 px) and class names."""

    variants: tuple[DemoVariantResult, ...]
    validation_images: np.ndarray = field(repr=False)
    validation_labels: np.ndarray = field(repr=False)
    class_names: tuple[str, ...]
    seed: int
    train_image_count: int
    total_seconds: float


# Images per split. Both are multiples of ten, so both splits are exactly balanced.
DEMO_TRAIN_IMAGES = 4000
DEMO_VALIDATION_IMAGES = 1000
QUICK_TRAIN_IMAGES = 300
QUICK_VALIDATION_IMAGES = 200


@dataclass(frozen=True)
class _Job:
    """One variant to build, as sent to a worker process (everything here pickles)."""

    index: int
    spec: DemoVariantSpec
    seed: int
    onnx_path: Path
    data_dir: Path
    num_threads: int | None


def _run_job(job: _Job, report: Callable[[int, float], None] | None = None) -> DemoVariantResult:
    """Train, export and evaluate one variant on the splits saved in ``job.data_dir``."""
    last = [-1.0]

    def on_progress(fraction: float) -> None:
        if report is not None and (fraction - last[0] >= 0.01 or fraction >= 1.0):
            last[0] = fraction
            report(job.index, 0.97 * fraction)

    train_images = np.load(job.data_dir / "train_images.npy", mmap_mode="r")
    train_labels = np.load(job.data_dir / "train_labels.npy")
    built = train_and_export(
        job.spec, train_images, train_labels, job.onnx_path, seed=job.seed,
        progress=on_progress, num_threads=job.num_threads,
    )
    val_images = np.load(job.data_dir / "val_images.npy", mmap_mode="r")
    val_labels = np.load(job.data_dir / "val_labels.npy")
    accuracy = evaluate_onnx(
        job.onnx_path, val_images, val_labels, job.spec.input_size_px,
        num_threads=job.num_threads or default_num_threads(job.spec),
    )
    if report is not None:
        report(job.index, 1.0)
    return DemoVariantResult(
        name=job.spec.name,
        input_size_px=job.spec.input_size_px,
        onnx_path=job.onnx_path,
        accuracy=accuracy,
        parameter_count=built.parameter_count,
        multiply_adds=built.multiply_adds,
        train_seconds=built.train_seconds,
        epochs=job.spec.epochs,
    )


def build_demo_models(
    out_dir: Path,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: Callable[[str, float], None] | None = None,
    variants: Sequence[DemoVariantSpec] | None = None,
    workers: int | None = None,
) -> DemoBuild:
    """Generate the dataset, train every variant, export ``out_dir/<variant>.onnx`` and score it.

    The train and validation splits are one ``make_demo_images`` call (the first images train,
    the rest validate), so they never overlap. Accuracy is top-1 of the *exported* ONNX file in
    ONNX Runtime on the validation split, preprocessed with ``resize_images`` as serving does.

    ``workers`` processes train variants side by side, one torch thread each (default: 2 on a
    machine with >= 2 cores, 1 in ``quick`` mode): on a 2-core machine that is faster than one
    process with two threads, and far faster when other programs share the CPU. Each variant has its own seed and trains on one
    thread (a float sum's order depends on the thread count), so the weights do not depend on
    the number of workers.

    ``progress(message, fraction)`` reports the whole build's completed fraction in [0, 1],
    weighted by the expected cost of each step; it is called from this thread only.
    ``quick`` builds ``DEMO_VARIANTS_QUICK`` on a few hundred images in seconds (for tests);
    ``variants`` overrides the list of variants.
    """
    _import_torch()  # fail before any work if torch is missing
    started = time.perf_counter()
    specs = tuple(variants) if variants is not None else (DEMO_VARIANTS_QUICK if quick else DEMO_VARIANTS)
    if not specs:
        raise ValueError("build_demo_models needs at least one variant")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    if workers is None:
        workers = 1 if quick else max(1, min(2, os.cpu_count() or 1))
    workers = max(1, min(int(workers), len(specs)))
    n_train = QUICK_TRAIN_IMAGES if quick else DEMO_TRAIN_IMAGES
    n_val = QUICK_VALIDATION_IMAGES if quick else DEMO_VALIDATION_IMAGES
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Progress weights: training ~ 3 x MACs x images x epochs plus a per-image floor; the
    # dataset ~ what a medium variant's epoch costs.
    costs = [(3.0 * count_multiply_adds(s) + 3e6) * n_train * s.epochs for s in specs]
    dataset_cost = 4e6 * (n_train + n_val)
    total_cost = dataset_cost + sum(costs)
    job_done = [0.0] * len(specs)

    def report(message: str) -> None:
        if progress is not None:
            done = dataset_cost + sum(f * c for f, c in zip(job_done, costs))
            progress(message, min(1.0, done / total_cost))

    if progress is not None:
        progress("generating the demo dataset", 0.0)
    images, labels = make_demo_images(n_train + n_val, seed=seed)
    val_images = np.ascontiguousarray(images[n_train:])
    val_labels = np.ascontiguousarray(labels[n_train:])
    report("generated the demo dataset")

    def on_job_progress(index: int, fraction: float) -> None:
        job_done[index] = fraction
        state = "built" if fraction >= 1.0 else ("evaluating" if fraction >= 0.97 else "training")
        report(f"{state} {specs[index].name}")

    with tempfile.TemporaryDirectory(prefix="shoal-demo-") as temporary:
        data_dir = Path(temporary)
        np.save(data_dir / "train_images.npy", images[:n_train])
        np.save(data_dir / "train_labels.npy", labels[:n_train])
        np.save(data_dir / "val_images.npy", val_images)
        np.save(data_dir / "val_labels.npy", val_labels)
        del images
        jobs = [
            _Job(
                index=i, spec=spec, seed=seed + 1000 * (i + 1), onnx_path=out_dir / f"{spec.name}.onnx",
                data_dir=data_dir, num_threads=1,  # one thread always: the weights must not depend on the workers
            )
            for i, spec in enumerate(specs)
        ]
        # Even one worker is a fresh interpreter: its thread settings (OMP_NUM_THREADS=1 before
        # torch loads) decide which kernels run, and so the weights' last bits.
        results = _run_jobs_in_pool(jobs, costs, workers, on_job_progress)
    if progress is not None:
        progress("done", 1.0)
    return DemoBuild(
        variants=tuple(results),
        validation_images=val_images,
        validation_labels=val_labels,
        class_names=tuple(CLASS_NAMES),
        seed=seed,
        train_image_count=n_train,
        total_seconds=time.perf_counter() - started,
    )


def _job_to_json(job: _Job) -> str:
    spec = job.spec
    return json.dumps(
        {
            "index": job.index,
            "spec": {
                "name": spec.name,
                "input_size_px": spec.input_size_px,
                "channels": list(spec.channels),
                "convs_per_stage": spec.convs_per_stage,
                "epochs": spec.epochs,
                "learning_rate": spec.learning_rate,
            },
            "seed": job.seed,
            "onnx_path": str(job.onnx_path),
            "data_dir": str(job.data_dir),
            "num_threads": job.num_threads,
        }
    )


def _job_from_json(text: str) -> _Job:
    data = json.loads(text)
    spec = data["spec"]
    return _Job(
        index=int(data["index"]),
        spec=DemoVariantSpec(
            name=spec["name"],
            input_size_px=int(spec["input_size_px"]),
            channels=tuple(int(c) for c in spec["channels"]),
            convs_per_stage=int(spec["convs_per_stage"]),
            epochs=float(spec["epochs"]),
            learning_rate=float(spec["learning_rate"]),
        ),
        seed=int(data["seed"]),
        onnx_path=Path(data["onnx_path"]),
        data_dir=Path(data["data_dir"]),
        num_threads=data["num_threads"],
    )


_WORKER_CODE = "import sys; from shoal.zoo.demo_train import _worker_main; _worker_main(sys.argv[1])"


def _worker_main(job_json: str) -> None:
    """Entry point of a worker process: run one job, report on stdout as JSON lines."""
    job = _job_from_json(job_json)

    def report(index: int, fraction: float) -> None:
        print(json.dumps({"progress": fraction}), flush=True)

    result = _run_job(job, report)
    payload = dataclasses.asdict(result)
    payload["onnx_path"] = str(result.onnx_path)
    print(json.dumps({"result": payload}), flush=True)


def _run_jobs_in_pool(
    jobs: list[_Job],
    costs: list[float],
    workers: int,
    on_progress: Callable[[int, float], None],
) -> list[DemoVariantResult]:
    """Run the jobs in up to ``workers`` worker processes, costliest first; results in job order.

    Workers are fresh interpreters (``python -c``), not forks of this process, so they never
    inherit its thread pools and never re-run the caller's ``__main__``. They talk JSON lines
    on stdout; stderr goes to a file that is quoted if a worker fails.
    """
    import queue as queue_module
    import subprocess
    import threading

    import shoal

    package_root = str(Path(shoal.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    events: queue_module.Queue[tuple[int, str | None]] = queue_module.Queue()
    waiting = sorted(range(len(jobs)), key=lambda i: -costs[i])
    running: dict[int, tuple[Any, Any]] = {}
    results: dict[int, DemoVariantResult] = {}

    def pump(index: int, stream: Any) -> None:
        for line in stream:
            events.put((index, line))
        events.put((index, None))

    def start(index: int) -> None:
        job = jobs[index]
        log = open(job.data_dir / f"worker-{index}.log", "w+b")  # noqa: SIM115 - closed on exit
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, _job_to_json(job)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, text=True,
        )
        running[index] = (process, log)
        threading.Thread(target=pump, args=(index, process.stdout), daemon=True).start()

    try:
        while waiting or running:
            while waiting and len(running) < workers:
                start(waiting.pop(0))
            index, line = events.get()
            if line is not None:
                message = json.loads(line) if line.startswith("{") else {}
                if "progress" in message:
                    on_progress(index, float(message["progress"]))
                elif "result" in message:
                    payload = message["result"]
                    payload["onnx_path"] = Path(payload["onnx_path"])
                    results[index] = DemoVariantResult(**payload)
                continue
            process, log = running.pop(index)
            code = process.wait()
            log.seek(0)
            tail = log.read()[-2000:].decode("utf-8", "replace").strip()
            log.close()
            if code != 0 or index not in results:
                raise ShoalError(
                    f"training demo variant {jobs[index].spec.name} failed in its worker process "
                    f"(exit status {code}): {tail or 'no output'}"
                )
    finally:
        for process, log in running.values():
            process.kill()
            process.wait()
            log.close()
    return [results[i] for i in range(len(jobs))]


if __name__ == "__main__":  # pragma: no cover - workers use _WORKER_CODE
    _worker_main(sys.argv[1])
