"""Profiling every variant of a family and storing the results in the repository."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shoal.core.models import Device, Profile
from shoal.profiler.measure import DEFAULT_BATCH_SIZES, profile_variant
from shoal.zoo.repository import ModelRepository

__all__ = ["profile_family", "profile_steps"]


def profile_steps(num_variants: int, batch_sizes: Sequence[int], repeats: int, num_validation_images: int) -> int:
    """Progress-bar total for profile_family: timed runs plus validation images."""
    return num_variants * (len(set(batch_sizes)) * repeats + num_validation_images)


def profile_family(
    repository: ModelRepository,
    family_name: str,
    device: Device,
    *,
    variant_names: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    repeats: int = 30,
    intra_op_threads: int | None = None,
    on_variant: Callable[[str], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Profile]:
    """Profile the named variants (all by default), save each profile, and return them."""
    family = repository.load_family(family_name)
    validation = repository.load_validation(family_name)
    names = list(variant_names) if variant_names else repository.variant_names(family_name)
    profiles = []
    for name in names:
        variant = repository.load_variant(family_name, name)
        if on_variant:
            on_variant(name)
        profile = profile_variant(
            repository.model_path(family_name, name),
            family,
            variant,
            device,
            batch_sizes=batch_sizes,
            repeats=repeats,
            intra_op_threads=intra_op_threads,
            validation=validation,
            progress=progress,
        )
        repository.save_profile(profile)
        profiles.append(profile)
    return profiles
