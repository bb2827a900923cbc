"""Building the demo family into a repository.

The models are trained by `shoal.zoo.demo_train` (PyTorch, an optional extra); this module only
turns the trained files into a registered family, so that the demo goes through the same
registration checks as any user's model.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from shoal.core.models import Family, Variant
from shoal.zoo import DEMO_FAMILY
from shoal.zoo.demo_dataset import SOURCE_IMAGE_PX
from shoal.zoo.repository import ModelRepository

__all__ = ["build_demo_repository"]


def build_demo_repository(
    root: Path,
    *,
    force: bool = False,
    quick: bool = False,
    family_name: str = DEMO_FAMILY,
    seed: int = 0,
    progress: Callable[[str, float], None] | None = None,
) -> Family:
    """Train and register the demo family under root/<family_name>; reuse it when it exists."""
    from shoal.zoo.demo_train import build_demo_models

    repository = ModelRepository(root)
    if repository.has_family(family_name):
        if not force:
            return repository.load_family(family_name)
        shutil.rmtree(repository.family_dir(family_name))
    with tempfile.TemporaryDirectory(prefix="shoal-demo-") as scratch:
        build = build_demo_models(Path(scratch), quick=quick, seed=seed, progress=progress)
        family = repository.create_family(
            Family(
                name=family_name,
                description="procedural 10-class texture/shape images; CNN variants from 32 to 128 px",
                num_classes=len(build.class_names),
                class_names=list(build.class_names),
                source_image_px=SOURCE_IMAGE_PX,
            ),
            build.validation_images,
            build.validation_labels,
        )
        try:
            for trained in build.variants:
                repository.add_variant(
                    Variant(
                        name=trained.name,
                        family=family_name,
                        input_size_px=trained.input_size_px,
                        accuracy=round(trained.accuracy, 6),
                        parameter_count=trained.parameter_count,
                        multiply_adds=trained.multiply_adds,
                        description=f"VGG-style CNN at {trained.input_size_px} px, trained {trained.epochs:g} epochs in {trained.train_seconds:.0f} s",
                    ),
                    trained.onnx_path,
                )
        except BaseException:
            # A half-registered family would be taken as built next time; remove it whole.
            shutil.rmtree(repository.family_dir(family_name), ignore_errors=True)
            raise
    if progress:
        progress("demo family registered", 1.0)
    return family
