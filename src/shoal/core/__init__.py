"""Typed data model shared by everything: devices, families, variants, profiles, errors."""

from shoal.core.errors import DeviceUnavailableError, InvalidInputError, RepositoryError, ShoalError
from shoal.core.models import NAME_PATTERN, Device, Family, LatencyStats, Profile, TensorSpec, Variant, check_name
from shoal.core.serialization import dump_json, dump_yaml, load_json, load_yaml

__all__ = [
    "NAME_PATTERN",
    "Device",
    "DeviceUnavailableError",
    "Family",
    "InvalidInputError",
    "LatencyStats",
    "Profile",
    "RepositoryError",
    "ShoalError",
    "TensorSpec",
    "Variant",
    "check_name",
    "dump_json",
    "dump_yaml",
    "load_json",
    "load_yaml",
]
