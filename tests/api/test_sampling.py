"""gradlab.science.sampling: at most max_points, first and last always kept."""

from __future__ import annotations

import math

import pytest

from gradlab.science.sampling import even_indices, minmax_indices


@pytest.mark.parametrize("count", [0, 1, 2, 5, 7, 100, 101])
@pytest.mark.parametrize("max_points", [2, 3, 4, 10, None])
def test_even_indices_bounds(count: int, max_points: int | None) -> None:
    sampling = even_indices(count, max_points)
    assert sampling.raw_count == count
    assert len(sampling.indices) <= (max_points or count)
    assert sampling.indices == sorted(set(sampling.indices))
    if count:
        assert sampling.indices[0] == 0 and sampling.indices[-1] == count - 1
    assert sampling.sampled == (max_points is not None and count > max_points)


def test_even_indices_are_spread() -> None:
    assert even_indices(101, 5).indices == [0, 25, 50, 75, 100]


@pytest.mark.parametrize("max_points", [2, 3, 6, 11])
def test_minmax_keeps_a_spike_first_and_last(max_points: int) -> None:
    values = [1.0] * 100
    values[37] = 50.0
    sampling = minmax_indices(values, max_points)
    assert len(sampling.indices) <= max_points and sampling.sampled
    assert sampling.indices[0] == 0 and sampling.indices[-1] == 99
    if max_points >= 3:
        assert 37 in sampling.indices


def test_minmax_keeps_a_nan() -> None:
    values = [float(i) for i in range(60)]
    values[20] = math.nan
    assert 20 in minmax_indices(values, 6).indices


def test_max_points_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        even_indices(10, 1)
