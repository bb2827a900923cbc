"""A small family of real ONNX models that builds in seconds without PyTorch.

Tests and quick demos need a family whose variants really differ in accuracy and cost, but
training CNNs with PyTorch takes minutes. Each fixture variant is a random-feature network:
one convolution with fixed random 3x3 filters, ReLU, global average pooling and a linear
classifier fitted by ridge regression on features that ONNX Runtime itself computes. More
filters and a larger input cost more and see finer texture, so the trade-off is real.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shoal.core.models import Device, Family, Variant
from shoal.profiler.session import create_session
from shoal.zoo.demo_dataset import CLASS_NAMES, SOURCE_IMAGE_PX, make_demo_images, to_float
from shoal.zoo.preprocess import resize_images
from shoal.zoo.repository import ModelRepository

__all__ = ["FixtureVariantSpec", "FIXTURE_VARIANTS", "build_fixture_family", "random_feature_model"]


@dataclass(frozen=True)
class FixtureVariantSpec:
    name: str
    input_size_px: int
    num_filters: int


FIXTURE_VARIANTS: tuple[FixtureVariantSpec, ...] = (
    FixtureVariantSpec("rf-16", input_size_px=16, num_filters=8),
    FixtureVariantSpec("rf-32", input_size_px=32, num_filters=16),
    FixtureVariantSpec("rf-64", input_size_px=64, num_filters=32),
)


def random_feature_model(
    input_size_px: int,
    conv_weights: np.ndarray,
    classifier_weights: np.ndarray | None,
    classifier_bias: np.ndarray | None,
    *,
    input_name: str = "images",
    output_name: str = "logits",
) -> onnx.ModelProto:
    """Conv(3x3) -> ReLU -> GlobalAveragePool -> Flatten [-> Gemm]; batch axis dynamic."""
    num_filters = conv_weights.shape[0]
    nodes = [
        helper.make_node("Conv", [input_name, "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
    ]
    initializers = [numpy_helper.from_array(conv_weights.astype(np.float32), "conv_w")]
    if classifier_weights is None:
        nodes.append(helper.make_node("Flatten", ["pooled"], [output_name]))
        output_dim = num_filters
    else:
        nodes += [
            helper.make_node("Flatten", ["pooled"], ["features"]),
            helper.make_node("Gemm", ["features", "fc_w", "fc_b"], [output_name]),
        ]
        initializers += [
            numpy_helper.from_array(classifier_weights.astype(np.float32), "fc_w"),
            numpy_helper.from_array(classifier_bias.astype(np.float32), "fc_b"),
        ]
        output_dim = classifier_weights.shape[1]
    graph = helper.make_graph(
        nodes,
        "random_features",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", conv_weights.shape[1], input_size_px, input_size_px])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", output_dim])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="shoal-fixture")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _fit_variant(spec: FixtureVariantSpec, train_images: np.ndarray, train_labels: np.ndarray, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    conv_weights = rng.normal(0.0, 1.0, size=(spec.num_filters, 3, 3, 3)).astype(np.float32)
    conv_weights -= conv_weights.mean(axis=(1, 2, 3), keepdims=True)  # edge/texture detectors
    feature_model = random_feature_model(spec.input_size_px, conv_weights, None, None)
    session = create_session(feature_model.SerializeToString(), Device.parse("cpu"), intra_op_threads=1)
    inputs = resize_images(to_float(train_images), spec.input_size_px)
    (features,) = session.run(None, {"images": inputs})
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    standardised = np.hstack([(features - mean) / std, np.ones((len(features), 1), np.float32)])
    targets = np.eye(len(CLASS_NAMES), dtype=np.float32)[train_labels]
    ridge = 1e-1 * np.eye(standardised.shape[1], dtype=np.float32)
    solution = np.linalg.solve(standardised.T @ standardised + ridge, standardised.T @ targets)
    # Fold the standardisation into the classifier so the exported model takes raw features.
    weights = solution[:-1] / std[:, None]
    bias = solution[-1] - (mean / std) @ solution[:-1]
    return random_feature_model(spec.input_size_px, conv_weights, weights, bias)


def build_fixture_family(
    repository: ModelRepository,
    *,
    family_name: str = "fixture",
    variants: tuple[FixtureVariantSpec, ...] = FIXTURE_VARIANTS,
    num_train_images: int = 400,
    num_validation_images: int = 200,
    seed: int = 0,
) -> Family:
    """Create the family with its validation set and register every variant (accuracy measured)."""
    from shoal.profiler.measure import measure_accuracy

    train_images, train_labels = make_demo_images(num_train_images, seed=seed)
    validation_images, validation_labels = make_demo_images(num_validation_images, seed=seed + 1)
    family = repository.create_family(
        Family(
            name=family_name,
            description="random-feature fixture family (built without PyTorch, for tests)",
            num_classes=len(CLASS_NAMES),
            class_names=list(CLASS_NAMES),
            source_image_px=SOURCE_IMAGE_PX,
        ),
        validation_images,
        validation_labels,
    )
    with tempfile.TemporaryDirectory() as scratch:
        for index, spec in enumerate(variants):
            model = _fit_variant(spec, train_images, train_labels, seed + 100 + index)
            path = Path(scratch) / f"{spec.name}.onnx"
            onnx.save(model, str(path))
            session = create_session(path, Device.parse("cpu"), intra_op_threads=1)
            variant = Variant(
                name=spec.name,
                family=family_name,
                input_size_px=spec.input_size_px,
                multiply_adds=spec.num_filters * 27 * spec.input_size_px**2 + spec.num_filters * len(CLASS_NAMES),
                description=f"{spec.num_filters} random 3x3 filters at {spec.input_size_px} px",
            )
            accuracy = measure_accuracy(session, family, variant, validation_images, validation_labels)
            repository.add_variant(variant.model_copy(update={"accuracy": round(accuracy, 6)}), path)
    return family
