"""Image preprocessing shared by training, profiling, serving and clients.

Every party that turns a full-resolution frame into a variant's input must do it the same way,
otherwise accuracy measured at registration would not be the accuracy served. The resize is
area averaging (each output pixel is the mean of the source area it covers), written as two
small matrix products so it needs only numpy and handles any integer output size.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["area_resize_matrix", "resize_images"]


@lru_cache(maxsize=64)
def area_resize_matrix(source_px: int, target_px: int) -> np.ndarray:
    """Return the (target_px, source_px) matrix whose rows average the covered source pixels."""
    if source_px <= 0 or target_px <= 0:
        raise ValueError(f"sizes must be positive, got source_px={source_px}, target_px={target_px}")
    scale = source_px / target_px
    matrix = np.zeros((target_px, source_px), dtype=np.float32)
    for row in range(target_px):
        start, end = row * scale, (row + 1) * scale
        first, last = int(np.floor(start)), int(np.ceil(end))
        for column in range(first, min(last, source_px)):
            overlap = min(end, column + 1) - max(start, column)
            if overlap > 0:
                matrix[row, column] = overlap / scale
    matrix.setflags(write=False)
    return matrix


def resize_images(images: np.ndarray, target_px: int) -> np.ndarray:
    """Resize a batch of square NCHW float32 images to target_px x target_px by area averaging."""
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"expected square NCHW images, got shape {images.shape}")
    source_px = images.shape[2]
    if source_px == target_px:
        return np.ascontiguousarray(images, dtype=np.float32)
    matrix = area_resize_matrix(source_px, target_px)
    # (S,H) @ (N,C,H,W) @ (W,S): rows first, then columns.
    resized = np.matmul(np.matmul(matrix, images.astype(np.float32, copy=False)), matrix.T)
    return np.ascontiguousarray(resized, dtype=np.float32)
