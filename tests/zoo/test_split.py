"""Cutting a classifier at its head: the halves compose to the original exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from shoal.core.errors import RepositoryError
from shoal.core.models import Device
from shoal.profiler.session import create_session
from shoal.zoo.repository import ModelRepository
from shoal.zoo.split import split_classifier


@pytest.mark.parametrize("variant", ["rf-16", "rf-64"])
def test_head_of_backbone_equals_the_whole_model(fixture_repository_path, tmp_path, variant):
    repository = ModelRepository(fixture_repository_path)
    whole_path = repository.model_path("fixture", variant)
    split = split_classifier(whole_path, tmp_path, variant)
    cpu = Device.parse("cpu")
    whole = create_session(whole_path, cpu, intra_op_threads=1)
    backbone = create_session(split.backbone_path, cpu, intra_op_threads=1)
    head = create_session(split.head_path, cpu, intra_op_threads=1)
    size = repository.load_variant("fixture", variant).input_size_px
    images = np.random.default_rng(0).random((7, 3, size, size), dtype=np.float32)
    (expected,) = whole.run(None, {split.input_name: images})
    (features,) = backbone.run(None, {split.input_name: images})
    (logits,) = head.run(None, {split.feature_name: features})
    assert features.shape == (7, split.feature_dim)
    np.testing.assert_array_equal(logits, expected)
    # The feature stage carries the compute: it is the bigger file by far.
    assert split.backbone_path.stat().st_size > split.head_path.stat().st_size


def test_a_model_without_a_fully_connected_head_is_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=1)],
        "softmax_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path / "softmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(RepositoryError, match="Softmax node, not a fully connected layer"):
        split_classifier(path, tmp_path / "out", "softmax")
