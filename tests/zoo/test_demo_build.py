"""The demo family goes through the same registration as any user's model (quick build)."""

import numpy as np

from shoal.zoo.demo import build_demo_repository
from shoal.zoo.repository import ModelRepository


def test_quick_demo_build_registers_a_checked_family(tmp_path):
    family = build_demo_repository(tmp_path, quick=True, family_name="demo")
    repository = ModelRepository(tmp_path)
    assert repository.family_names() == ["demo"] and family.num_classes == 10
    variants = repository.variants("demo")
    assert len(variants) >= 2
    for variant in variants:
        assert variant.accuracy is not None and variant.parameter_count > 0 and variant.multiply_adds > 0
        assert (tmp_path / "demo" / variant.name / "model.onnx").is_file()
    images, labels = repository.load_validation("demo")
    assert images.dtype == np.uint8 and len(images) == len(labels)
    # Built once: a second call reuses it instead of training again.
    assert build_demo_repository(tmp_path, quick=True, family_name="demo") == repository.load_family("demo")
