import numpy as np
import pytest

from shoal.runtime.rolling import RollingPercentile


def test_matches_numpy_over_the_last_window_values_with_ties_and_evictions():
    rng = np.random.default_rng(11)
    # rounded values: many ties, so evicting the right copy of a value matters
    values = np.round(rng.normal(0.0, 3.0, 700), 1)
    rolling = RollingPercentile(50)
    for count, value in enumerate(values, start=1):
        rolling.add(float(value))
        window = values[max(0, count - 50) : count]
        assert len(rolling) == len(window)
        for percent in (0, 50, 90, 98, 100):
            assert rolling.percentile(percent) == pytest.approx(float(np.percentile(window, percent)), rel=1e-12, abs=1e-12)


def test_extend_is_add_in_order_and_empty_or_bad_windows_are_refused():
    one, other = RollingPercentile(3), RollingPercentile(3)
    one.extend([5.0, 1.0, 9.0, 2.0])
    for value in (5.0, 1.0, 9.0, 2.0):
        other.add(value)
    assert one.percentile(50) == other.percentile(50) == 2.0  # 5.0 left first: {1, 9, 2}
    with pytest.raises(ValueError, match="no values yet"):
        RollingPercentile(4).percentile(50)
    with pytest.raises(ValueError, match="window must be >= 1"):
        RollingPercentile(0)


def test_a_nan_is_ignored_and_evictions_stay_right():
    rolling = RollingPercentile(3)
    rolling.extend([2.0, float("nan"), 1.0])  # kept, a NaN would leave the window unsorted
    assert len(rolling) == 2 and rolling.percentile(0) == 1.0 and rolling.percentile(100) == 2.0
    rolling.extend([1.0, float("nan"), 2.0, 3.0, 4.0])
    assert len(rolling) == 3 and rolling.percentile(0) == 2.0 and rolling.percentile(100) == 4.0
