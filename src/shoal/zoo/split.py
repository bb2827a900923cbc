"""Cut a classifier into a feature stage and a classifier-head stage (two ONNX files).

A workflow needs stages that run on different workers; the most common cut of an image
classifier is before its last fully connected layer: the backbone turns an image into a
feature vector (most of the compute), the head turns features into logits (almost none). The
cut is made with `onnx.utils.extract_model`, so both halves are exact subgraphs of the original
and `head(backbone(x)) == model(x)` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.utils

from shoal.core.errors import RepositoryError

__all__ = ["ClassifierSplit", "feature_tensor_name", "split_classifier"]

_HEAD_OPS = ("Gemm", "MatMul")


@dataclass(frozen=True)
class ClassifierSplit:
    """Where the two halves were written and the tensors that join them."""

    backbone_path: Path
    head_path: Path
    input_name: str
    feature_name: str
    output_name: str
    feature_dim: int


def feature_tensor_name(model: onnx.ModelProto) -> str:
    """The data input of the layer that produces the model's output (its classifier head).

    Only a head that is a single Gemm/MatMul producing the graph output is recognised: anything
    else (a softmax after it, a head of several layers) is refused rather than cut somewhere a
    user did not expect.
    """
    output_name = model.graph.output[0].name
    initializers = {tensor.name for tensor in model.graph.initializer}
    for node in model.graph.node:
        if output_name in node.output:
            if node.op_type not in _HEAD_OPS:
                raise RepositoryError(
                    f"cannot split: the output {output_name!r} comes from a {node.op_type} node, "
                    f"not a fully connected layer ({' or '.join(_HEAD_OPS)})"
                )
            data_inputs = [name for name in node.input if name and name not in initializers]
            if len(data_inputs) != 1:
                raise RepositoryError(f"cannot split: the head {node.name or node.op_type} has {len(data_inputs)} data inputs, expected 1")
            return data_inputs[0]
    raise RepositoryError(f"cannot split: no node produces the output {output_name!r}")


def split_classifier(model_path: Path, out_dir: Path, stem: str) -> ClassifierSplit:
    """Write `<stem>.backbone.onnx` and `<stem>.head.onnx` into `out_dir`."""
    model_path = Path(model_path)
    model = onnx.load(str(model_path))
    feature_name = feature_tensor_name(model)
    input_name = model.graph.input[0].name
    output_name = model.graph.output[0].name
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone_path = out_dir / f"{stem}.backbone.onnx"
    head_path = out_dir / f"{stem}.head.onnx"
    onnx.utils.extract_model(str(model_path), str(backbone_path), [input_name], [feature_name])
    onnx.utils.extract_model(str(model_path), str(head_path), [feature_name], [output_name])
    head = onnx.load(str(head_path))
    dims = head.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_value:
        raise RepositoryError(f"cannot split {model_path}: the feature tensor {feature_name!r} is not [batch, features]")
    return ClassifierSplit(backbone_path, head_path, input_name, feature_name, output_name, int(dims[1].dim_value))
