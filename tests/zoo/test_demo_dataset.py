"""The demo dataset: deterministic, balanced, and its fine textures vanish at coarse scales."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from shoal.zoo.demo_dataset import (
    CLASS_NAMES,
    NUM_CLASSES,
    PAIR_TEXTURES,
    SOURCE_IMAGE_PX,
    _render_chunk,
    make_demo_images,
    to_float,
)
from shoal.zoo.preprocess import resize_images


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    return make_demo_images(400, seed=3)


def test_shapes_dtypes_and_names(sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample
    assert SOURCE_IMAGE_PX == 128
    assert images.shape == (400, 3, 128, 128) and images.dtype == np.uint8
    assert labels.shape == (400,) and labels.dtype == np.int64
    assert images.flags.c_contiguous
    assert len(CLASS_NAMES) == NUM_CLASSES == 10 and len(set(CLASS_NAMES)) == 10
    assert all(re.fullmatch(r"[a-z0-9-]+", name) for name in CLASS_NAMES)
    assert len(PAIR_TEXTURES) == NUM_CLASSES // 2
    # images use the whole range and are not constant
    assert images.min() < 30 and images.max() > 225
    assert images.reshape(400, -1).std(axis=1).min() > 5


def test_labels_are_balanced(sample: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = sample
    assert np.bincount(labels, minlength=10).tolist() == [40] * 10
    # every block of ten holds each class once, so prefixes of multiples of ten are balanced
    assert all(sorted(block) == list(range(10)) for block in labels.reshape(-1, 10))
    assert not np.array_equal(labels[:10], np.arange(10))  # shuffled within blocks
    _, odd = make_demo_images(23, seed=0)
    assert np.bincount(odd, minlength=10).max() - np.bincount(odd, minlength=10).min() <= 1


def test_deterministic_given_seed() -> None:
    a_images, a_labels = make_demo_images(150, seed=7)
    b_images, b_labels = make_demo_images(150, seed=7)
    assert a_images.tobytes() == b_images.tobytes()
    assert np.array_equal(a_labels, b_labels)
    c_images, c_labels = make_demo_images(150, seed=8)
    assert not np.array_equal(a_labels, c_labels)
    assert np.mean(a_images != c_images) > 0.5


def test_empty_and_bad_arguments() -> None:
    images, labels = make_demo_images(0, seed=0)
    assert images.shape == (0, 3, 128, 128) and labels.shape == (0,)
    with pytest.raises(ValueError):
        make_demo_images(-1, seed=0)
    with pytest.raises(TypeError):
        make_demo_images(2.5, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        to_float(np.zeros((1, 3, 4, 4), dtype=np.float32))


def test_to_float() -> None:
    images, _ = make_demo_images(10, seed=1)
    floats = to_float(images)
    assert floats.dtype == np.float32 and floats.shape == images.shape
    assert 0.0 <= floats.min() and floats.max() <= 1.0
    np.testing.assert_allclose(floats * 255.0, images.astype(np.float32), atol=1e-3)


def _render_pair(pair: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same scenes rendered as the pair's plain class and as its textured class.

    The renderer draws the same random numbers whatever the label within a pair, so two renders
    from equal generator states differ only by the texture on the object.
    """
    plain = _render_chunk(np.full(count, 2 * pair), np.random.default_rng(seed))
    textured = _render_chunk(np.full(count, 2 * pair + 1), np.random.default_rng(seed))
    return to_float(plain), to_float(textured)


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt((x.astype(np.float64) ** 2).mean(axis=(1, 2, 3)))


@pytest.mark.parametrize("pair", range(5))
def test_textures_differ_at_fine_scale_and_vanish_at_coarse_scale(pair: int) -> None:
    plain, textured = _render_pair(pair, 40, seed=pair)
    difference = textured - plain
    # only the object differs (it covers well under a third of the frame), and it differs visibly
    changed = np.mean(np.any(difference != 0, axis=1), axis=(1, 2))
    assert (changed > 0.02).all() and (changed < 0.3).all()
    full = _rms(difference)
    assert full.mean() > 0.015  # ~4 grey levels or more on average over the whole frame
    # zero-mean texture: the pair has the same mean colour, only the texture tells them apart
    assert (np.abs(difference.mean(axis=(1, 2, 3))) < 0.1 * full + 1e-3).all()

    def kept(size_px: int) -> float:
        """Fraction of the difference that survives the serving resize to size_px."""
        return float((_rms(resize_images(difference, size_px)) / full).mean())

    kind, half_period = PAIR_TEXTURES[pair]
    if half_period <= 2:  # 2 px checks, 1 px lines, 1 px checks: gone at 32 px
        assert kept(32) < 0.15
    if half_period == 1:  # 1 px textures: (almost) gone at 64 px already
        assert kept(64) < 0.2
    if half_period >= 4:  # 4 px and 8 px bands stay visible at 32 px
        assert kept(32) > 0.3
    # coarser inputs keep less of every texture, as resolution should cost accuracy
    assert kept(32) < kept(96) + 1e-6
    # and a 32 px input sees the pair much closer than the 128 px one does
    assert kept(32) < 0.9


def test_generation_is_fast_enough() -> None:
    import time

    started = time.perf_counter()
    make_demo_images(500, seed=0)
    # ~0.3 s on a 2-core machine; generous for loaded CI machines
    assert time.perf_counter() - started < 10.0


def test_no_torch_import() -> None:
    import shoal.zoo.demo_dataset as module

    source = open(module.__file__, encoding="utf-8").read()
    assert "import torch" not in source
    assert "shoal.zoo.demo_dataset" in sys.modules
