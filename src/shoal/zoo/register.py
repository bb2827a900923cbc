"""Registering a variant into an existing family: measured before it becomes selectable.

Model-less serving picks variants by accuracy, latency and cost, so a variant without those
numbers cannot be chosen safely. Registration therefore measures first (accuracy on the
family's validation set, a latency profile on every device given) and writes last: the model
is copied and the profiles saved only when every measurement succeeded, so a refused or
failing model leaves the repository as it was. Shared by `shoal zoo add`'s HTTP twin
(`POST /v2/repository/families/{family}/variants/{variant}`) and usable from Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shoal.core.errors import RepositoryError
from shoal.core.models import Device, Family, Profile, Variant
from shoal.zoo.repository import ModelRepository, check_signature_matches, inspect_model

__all__ = ["measure_and_add", "register_measured_variant"]


def register_measured_variant(
    repository: ModelRepository,
    family_name: str,
    variant_name: str,
    model_path: Path,
    devices: Sequence[Device],
    *,
    description: str = "",
    profile_batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
    profile_repeats: int = 10,
) -> tuple[Variant, list[Profile]]:
    family = repository.load_family(family_name)
    repository.check_absent(family_name, variant_name)  # an unsafe or invalid name is refused here too
    validation = repository.load_validation(family_name)
    if validation is None:
        raise RepositoryError(
            f"family {family_name!r} has no validation set, so a new variant's accuracy cannot be measured; "
            "add one with `shoal zoo add --validation` when creating the family"
        )
    signature = inspect_model(model_path)
    spec = Variant(name=variant_name, family=family_name, input_size_px=signature.input_size_px, description=description)
    check_signature_matches(family, signature, spec, Path(model_path))  # before any measurement runs it
    return measure_and_add(
        repository, family, spec, model_path, devices, validation, profile_batch_sizes=profile_batch_sizes, profile_repeats=profile_repeats
    )


def measure_and_add(
    repository: ModelRepository,
    family: Family,
    spec: Variant,
    model_path: Path,
    devices: Sequence[Device],
    validation: tuple[np.ndarray, np.ndarray] | None,
    *,
    profile_batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
    profile_repeats: int = 10,
    accuracy_threads: int | None = 1,
) -> tuple[Variant, list[Profile]]:
    """Accuracy on `validation` (images, labels; left unmeasured without), a latency profile on
    every device in `devices`, then the variant and its profiles written: model-less selection
    and the autoscaler can consider it from the moment it exists. The caller has checked the
    name and the model's signature; nothing is written if a measurement fails.
    `accuracy_threads`: one by default, beside a server's workers; None: the machine's default."""
    from shoal.profiler import create_session, measure_accuracy
    from shoal.profiler.measure import profile_variant

    if validation is not None:
        session = create_session(model_path, Device.parse("cpu"), intra_op_threads=accuracy_threads)
        spec = spec.model_copy(update={"accuracy": round(measure_accuracy(session, family, spec, *validation), 6)})
    profiles = [
        profile_variant(model_path, family, spec, device, batch_sizes=profile_batch_sizes, repeats=profile_repeats)
        for device in devices
    ]
    stored = repository.add_variant(spec, model_path)
    for profile in profiles:
        repository.save_profile(profile)
    return stored, profiles
