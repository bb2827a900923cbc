"""Measures latency per (variant, batch size, device) and accuracy on validation data."""

from shoal.profiler.measure import DEFAULT_BATCH_SIZES, measure_accuracy, profile_variant
from shoal.profiler.session import available_devices, create_session, default_intra_op_threads

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "available_devices",
    "create_session",
    "default_intra_op_threads",
    "measure_accuracy",
    "profile_variant",
]
