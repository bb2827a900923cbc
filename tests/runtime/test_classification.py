"""Triton's classification extension: the top classes of each item as strings."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from shoal.runtime.classification import classification_count, serialize_bytes_tensor, top_classes
from shoal.runtime.errors import BadRequestError


def test_the_top_classes_are_the_highest_values_first_with_ties_by_index_and_labels():
    scores = np.array([[1.0, 5.0, 10.0, 4.0], [2.0, 2.0, 0.5, 3.0]], np.float32)
    classes = top_classes(scores, 2)
    assert classes.tolist() == [[b"10.000000:2", b"5.000000:1"], [b"3.000000:3", b"2.000000:0"]]
    labelled = top_classes(scores, 1, ["cat", "dog", "ship", "frog"])
    assert labelled.tolist() == [[b"10.000000:2:ship"], [b"3.000000:3:frog"]]


def test_a_bytes_tensor_is_serialised_with_little_endian_lengths():
    raw = serialize_bytes_tensor(np.array([[b"ab", b""], [b"xyz", b"q"]], dtype=object))
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 3) + b"xyz" + struct.pack("<I", 1) + b"q"


@pytest.mark.parametrize("count", [0, -1, True, 2.0, "3", None])
def test_a_count_is_a_whole_number_of_at_least_one(count):
    with pytest.raises(BadRequestError, match="'classification' must be a whole number >= 1"):
        classification_count(count, "output 'logits'")


def test_classes_past_the_family_s_names_have_no_label_and_unsigned_scores_rank_by_value():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]], np.float32)  # wider than the three names
    assert top_classes(scores, 2, ["a", "b", "c"]).tolist() == [[b"0.900000:1:b", b"0.700000:3"]]
    assert top_classes(np.array([[0, 1, 2, 200]], np.uint8), 2).tolist() == [[b"200.000000:3", b"2.000000:2"]]
