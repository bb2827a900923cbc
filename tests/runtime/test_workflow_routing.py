"""Smooth weighted round-robin: exact proportions, even interleaving, clear errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from shoal.core.errors import InvalidInputError
from shoal.runtime.workflow import SmoothWeightedRoundRobin


@pytest.mark.parametrize("seed", range(5))
def test_every_prefix_stays_within_about_one_pick_of_the_planned_shares(seed):
    rng = np.random.default_rng(seed)
    weights = {f"w{i}": float(rng.uniform(0.5, 500.0)) for i in range(int(rng.integers(2, 7)))}
    router = SmoothWeightedRoundRobin(weights)
    total = sum(weights.values())
    counts = dict.fromkeys(weights, 0)
    for picks in range(1, 3001):
        counts[router.pick()] += 1
        for name, weight in weights.items():
            # Smooth weighted round-robin keeps each name within about one pick of its share
            # (slightly more for some weight sets); random choice drifts by sqrt(picks).
            assert abs(counts[name] - picks * weight / total) <= 1.1, (name, picks)


def test_equal_weights_alternate_and_a_double_weight_never_bursts():
    router = SmoothWeightedRoundRobin({"a": 1.0, "b": 1.0})
    assert [router.pick() for _ in range(6)] == ["a", "b", "a", "b", "a", "b"]
    router = SmoothWeightedRoundRobin({"a": 2.0, "b": 1.0, "c": 1.0})
    sequence = [router.pick() for _ in range(400)]
    longest_run = max(len(list(group)) for _, group in itertools.groupby(sequence))
    assert longest_run <= 2  # a (half the share) runs at most twice in a row; random choice bursts far longer
    assert sequence.count("a") == 200 and sequence.count("b") == sequence.count("c") == 100


def test_zero_shares_are_never_picked_and_no_positive_share_is_an_error():
    router = SmoothWeightedRoundRobin({"a": 3.0, "idle": 0.0})
    assert {router.pick() for _ in range(10)} == {"a"}
    assert router.share("a") == 1.0 and router.share("idle") == 0.0
    with pytest.raises(InvalidInputError, match="no positive entry"):
        SmoothWeightedRoundRobin({"a": 0.0})


def test_a_pick_can_leave_out_names_that_cannot_take_it():
    """A worker that is down sits picks out; the others share them in their own proportions, and
    with none left there is no pick."""
    router = SmoothWeightedRoundRobin({"a": 1.0, "b": 1.0, "c": 2.0})
    picks = [router.pick(lambda name: name != "c") for _ in range(6)]
    assert sorted(picks) == ["a", "a", "a", "b", "b", "b"]
    assert router.pick(lambda name: False) is None
    sequence = [router.pick() for _ in range(400)]  # all back: the planned shares again
    assert abs(sequence.count("c") - 200) <= 2 and abs(sequence.count("a") - 100) <= 2
