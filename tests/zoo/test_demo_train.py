"""Demo family models: specs, quick training, ONNX export and the whole-family build (quick)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shoal.core.errors import ShoalError
from shoal.zoo.demo_dataset import CLASS_NAMES, make_demo_images, to_float
from shoal.zoo.demo_train import (
    DEMO_VARIANTS,
    DEMO_VARIANTS_QUICK,
    DemoBuild,
    DemoVariantSpec,
    TorchUnavailableError,
    build_demo_models,
    count_multiply_adds,
    count_parameters,
    export_onnx,
    train_and_export,
    train_variant,
)
from shoal.zoo.preprocess import resize_images

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SRC = Path(__file__).resolve().parents[2] / "src"


def test_variant_specs() -> None:
    assert len(DEMO_VARIANTS) >= 8
    names = [spec.name for spec in DEMO_VARIANTS + DEMO_VARIANTS_QUICK]
    assert len(set(names)) == len(names)
    assert all(NAME.match(name) for name in names)
    sizes = {spec.input_size_px for spec in DEMO_VARIANTS}
    assert min(sizes) <= 32 and max(sizes) == 128 and len(sizes) >= 4
    macs = [count_multiply_adds(spec) for spec in DEMO_VARIANTS]
    assert max(macs) >= 200e6  # the largest needs ~2 ms per image in ONNX Runtime
    assert max(macs) / min(macs) > 50
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEMO_VARIANTS[0].name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        DemoVariantSpec("bad", 8, (4, 4, 4, 4, 4))  # too many stages for 8 px
    with pytest.raises(ValueError):
        DemoVariantSpec("../escape", 32, (8,))
    with pytest.raises(ValueError):
        DemoVariantSpec("big", 256, (8,))
    with pytest.raises(ValueError):
        DemoVariantSpec("none", 32, (8,), epochs=0)


def test_multiply_adds_by_hand() -> None:
    spec = DemoVariantSpec("t", 32, (8, 16), convs_per_stage=1)
    # conv 3->8 at 32x32, pool, conv 8->16 at 16x16, linear 16->10
    assert count_multiply_adds(spec) == 32 * 32 * 8 * 27 + 16 * 16 * 16 * 72 + 160
    assert count_parameters(spec) == (8 * 27 + 8) + (16 * 72 + 16) + (160 + 10)


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoBuild, list[tuple[str, float]]]:
    out = tmp_path_factory.mktemp("demo")
    calls: list[tuple[str, float]] = []
    build = build_demo_models(out, quick=True, seed=0, progress=lambda m, f: calls.append((m, f)))
    return build, calls


def test_quick_build_exports_checked_onnx_files(quick_build: tuple[DemoBuild, list]) -> None:
    import onnx
    import onnxruntime as ort

    build, _ = quick_build
    assert [v.name for v in build.variants] == [s.name for s in DEMO_VARIANTS_QUICK]
    for result, spec in zip(build.variants, DEMO_VARIANTS_QUICK):
        path = result.onnx_path
        assert path.name == f"{spec.name}.onnx" and path.is_file()
        # one self-contained file: nothing else beside it, no external tensors
        assert sorted(p.name for p in path.parent.iterdir()) == sorted(
            f"{s.name}.onnx" for s in DEMO_VARIANTS_QUICK
        )
        model = onnx.load(str(path), load_external_data=False)
        assert not any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
        )
        onnx.checker.check_model(model, full_check=True)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert {n.op_type for n in model.graph.node} <= {
            "Conv", "Relu", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm"
        }  # batch-norm folded away
        initializer_size = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        assert initializer_size == result.parameter_count == count_parameters(spec)
        assert result.multiply_adds == count_multiply_adds(spec)
        assert result.input_size_px == spec.input_size_px

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (inp,), (out,) = session.get_inputs(), session.get_outputs()
        size = spec.input_size_px
        assert inp.name == "images" and inp.type == "tensor(float)"
        assert inp.shape == ["batch", 3, size, size]
        assert out.name == "logits" and out.type == "tensor(float)" and out.shape == ["batch", 10]
        images = resize_images(to_float(build.validation_images[:3]), size)
        for batch in (1, 3):
            (logits,) = session.run(["logits"], {"images": images[:batch]})
            assert logits.shape == (batch, 10) and logits.dtype == np.float32
            assert np.isfinite(logits).all()


def test_quick_build_is_above_chance_and_returns_validation_split(
    quick_build: tuple[DemoBuild, list],
) -> None:
    build, _ = quick_build
    assert build.class_names == tuple(CLASS_NAMES)
    assert build.validation_images.dtype == np.uint8
    assert build.validation_images.shape[1:] == (3, 128, 128)
    assert build.validation_labels.dtype == np.int64
    n_val = build.validation_images.shape[0]
    assert n_val >= 100 and build.validation_labels.shape == (n_val,)
    assert np.bincount(build.validation_labels, minlength=10).tolist() == [n_val // 10] * 10
    for result in build.variants:
        # chance is 10 %; shape and hue alone separate the five pairs (up to 50 %)
        assert result.accuracy > 0.2, result
        assert result.train_seconds > 0


def test_quick_build_progress(quick_build: tuple[DemoBuild, list]) -> None:
    _, calls = quick_build
    fractions = [f for _, f in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    assert any("training" in message for message, _ in calls)


@pytest.fixture(scope="module")
def small_data() -> tuple[np.ndarray, np.ndarray]:
    return make_demo_images(100, seed=5)


def test_onnx_matches_torch_and_training_is_deterministic(
    tmp_path: Path, small_data: tuple[np.ndarray, np.ndarray]
) -> None:
    import onnxruntime as ort

    images, labels = small_data
    spec = DemoVariantSpec("check-24", 24, (8, 16), convs_per_stage=2, epochs=1)
    seen: list[float] = []
    first = train_variant(spec, images, labels, epochs=1, seed=3, progress=seen.append)
    assert seen and seen[-1] == 1.0
    export_onnx(first, tmp_path / "a.onnx")
    second = train_and_export(spec, images, labels, tmp_path / "b.onnx", epochs=1, seed=3)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert second.parameter_count == count_parameters(spec)
    assert second.multiply_adds == count_multiply_adds(spec)

    inputs = resize_images(to_float(images[:8]), 24)
    session = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"images": inputs})
    np.testing.assert_allclose(onnx_logits, first.predict_logits(inputs), rtol=1e-4, atol=1e-4)

    other = train_variant(spec, images, labels, epochs=1, seed=4)
    assert not np.allclose(other.predict_logits(inputs), first.predict_logits(inputs))


def test_bad_training_arguments(small_data: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = small_data
    spec = DEMO_VARIANTS_QUICK[0]
    with pytest.raises(ValueError):
        train_variant(spec, images[:, :, :64, :64], labels, epochs=1, seed=0)
    with pytest.raises(ValueError):
        train_variant(spec, images, labels[:5], epochs=1, seed=0)
    with pytest.raises(ValueError):
        train_variant(spec, images, labels, epochs=0, seed=0)


def test_without_torch_the_module_imports_and_training_says_how_to_fix(
    monkeypatch: pytest.MonkeyPatch, small_data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images, labels = small_data
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(TorchUnavailableError) as info:
        train_variant(DEMO_VARIANTS_QUICK[0], images, labels, epochs=1, seed=0)
    assert isinstance(info.value, ShoalError)
    assert "pip install 'shoal[build]'" in str(info.value)
    with pytest.raises(TorchUnavailableError):
        build_demo_models(tmp_path / "none", quick=True)
    assert not (tmp_path / "none").exists()


def test_module_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import shoal.zoo.demo_train as m\n"
        "print(len(m.DEMO_VARIANTS), m.count_multiply_adds(m.DEMO_VARIANTS[-1]) > 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(DEMO_VARIANTS)), "True"]


def test_worker_processes_give_the_same_models(
    tmp_path: Path, quick_build: tuple[DemoBuild, list]
) -> None:
    """The default full build trains in worker processes; the weights must not depend on it."""
    in_process, _ = quick_build
    calls: list[float] = []
    pooled = build_demo_models(
        tmp_path, quick=True, seed=0, workers=2, progress=lambda m, f: calls.append(f)
    )
    assert calls[-1] == 1.0 and all(b >= a for a, b in zip(calls, calls[1:]))
    for a, b in zip(in_process.variants, pooled.variants):
        assert a.name == b.name and a.accuracy == b.accuracy
        assert a.onnx_path.read_bytes() == b.onnx_path.read_bytes()
    assert np.array_equal(in_process.validation_images, pooled.validation_images)
