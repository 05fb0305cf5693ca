"""The numpy group-by helpers of the state updates against the pandas calls they replace."""

import numpy as np
import pandas as pd
import pytest

from detector.detectors.device_graph import _sorted_group_codes
from detector.detectors.sharing import KeySharingDetector, distinct_networks_so_far
from detector.state.groups import (
    first_in_group,
    group_codes,
    group_min,
    position_in_group,
    previous_in_group,
    rows_in,
)
from detector.state.sharing import _enough_crossing_days, _networks_so_far

# Hashes near the top of the uint64 range, where a cast to int64 or float64 would merge or reorder them.
LARGE = np.array([2**64 - 1, 2**64 - 2, 2**63, 1], dtype=np.uint64)


def random_keys(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return an int64 owner column and a uint64 hash column with many repeats."""
    return rng.integers(0, 4, size).astype(np.int64), LARGE[rng.integers(0, len(LARGE), size)]


@pytest.mark.parametrize("size", [0, 1, 2, 7, 50])
def test_group_codes_match_ngroup(size):
    rng = np.random.default_rng(size)
    for _ in range(20):
        owner, value = random_keys(rng, size)
        expected = pd.DataFrame({"owner": owner, "value": value}).groupby(["owner", "value"], sort=False).ngroup()
        assert group_codes(owner, value).tolist() == expected.tolist()


def test_group_codes_large_hashes_distinct():
    codes = group_codes(np.zeros(4, np.int64), LARGE)
    assert codes.tolist() == [0, 1, 2, 3]


def test_group_codes_empty_dtype():
    codes = group_codes(np.empty(0, np.int64), np.empty(0, np.uint64))
    assert codes.dtype == np.int64
    assert len(codes) == 0


@pytest.mark.parametrize("size", [0, 1, 9, 40])
def test_sorted_group_codes_match_ngroup(size):
    rng = np.random.default_rng(100 + size)
    for _ in range(20):
        subject, net, ua = (rng.integers(0, 3, size) for _ in range(3))
        frame = pd.DataFrame({"subject": subject, "net": net, "ua": ua})
        expected = frame.groupby(["subject", "net", "ua"], sort=True).ngroup()
        assert _sorted_group_codes(subject, net, ua).tolist() == expected.tolist()


@pytest.mark.parametrize("size", [0, 1, 8, 40])
def test_first_in_group_matches_duplicated(size):
    rng = np.random.default_rng(200 + size)
    for _ in range(20):
        owner, value = random_keys(rng, size)
        expected = ~pd.DataFrame({"owner": owner, "value": value}).duplicated()
        assert first_in_group(group_codes(owner, value)).tolist() == expected.tolist()


@pytest.mark.parametrize("from_end", [False, True])
@pytest.mark.parametrize("size", [0, 1, 8, 40])
def test_position_in_group_matches_cumcount(size, from_end):
    rng = np.random.default_rng(300 + size)
    for _ in range(20):
        codes = rng.integers(0, 5, size)
        expected = pd.Series(codes).groupby(codes).cumcount(ascending=not from_end)
        assert position_in_group(codes, from_end=from_end).tolist() == expected.tolist()


@pytest.mark.parametrize("size", [0, 1, 8, 40])
def test_previous_in_group_matches_shift(size):
    rng = np.random.default_rng(400 + size)
    for _ in range(20):
        codes = rng.integers(0, 5, size)
        values = rng.random(size) * 1e9
        expected = pd.Series(values).groupby(codes).shift(1).to_numpy()
        assert np.array_equal(previous_in_group(values, codes), expected, equal_nan=True)


def test_previous_in_group_fill():
    previous = previous_in_group(np.array([5.0, 6.0, 7.0]), np.array([1, 0, 1]), fill=-1.0)
    assert previous.tolist() == [-1.0, -1.0, 5.0]


def test_group_min_matches_transform():
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 6, 60)
    values = rng.random(60)
    expected = pd.Series(values).groupby(codes).transform("min").to_numpy()
    assert np.array_equal(group_min(values, codes), expected)


def test_group_min_empty():
    assert len(group_min(np.empty(0), np.empty(0, np.int64))) == 0


def test_rows_in_marks_matching_pairs():
    owner = np.array([0, 0, 1, 1, 2])
    net = np.array([LARGE[0], LARGE[1], LARGE[0], LARGE[2], LARGE[3]])
    found = rows_in((owner, net), (np.array([1, 0, 2]), np.array([LARGE[0], LARGE[1], LARGE[0]])))
    assert found.tolist() == [False, True, True, False, False]


def test_rows_in_without_targets():
    found = rows_in((np.array([0, 1]), np.array([LARGE[0], LARGE[1]])), (np.empty(0, np.int64), np.empty(0, np.uint64)))
    assert found.tolist() == [False, False]


def test_rows_in_without_rows():
    found = rows_in((np.empty(0, np.int64), np.empty(0, np.uint64)), (np.array([0]), LARGE[:1]))
    assert len(found) == 0


def test_networks_so_far_matches_batch():
    rng = np.random.default_rng(7)
    for _ in range(200):
        switches, earlier = int(rng.integers(1, 12)), int(rng.integers(0, 6))
        subject = np.sort(rng.integers(0, 3, switches))
        previous_net, net = (LARGE[rng.integers(0, 4, switches)] for _ in range(2))
        earlier_subject = np.sort(rng.integers(0, 3, earlier))
        earlier_net = LARGE[rng.integers(0, 4, earlier)]

        rows = pd.DataFrame({"subject": subject, "previous_net": previous_net, "net": net})
        expected = distinct_networks_so_far(rows, pd.DataFrame({"subject": earlier_subject, "net": earlier_net}))
        counted = _networks_so_far(subject, previous_net, net, earlier_subject, earlier_net)
        assert counted.tolist() == expected.tolist()


@pytest.mark.parametrize("days", [1, 2, 3])
def test_enough_crossing_days_matches_batch(days):
    detector = KeySharingDetector(min_country_days=days)
    rng = np.random.default_rng(days)
    for size in [0, 1, 2, 5, 30]:
        subject = np.sort(rng.integers(0, 3, size))
        day = np.zeros(size, np.int64)
        for owner in np.unique(subject):
            mine = subject == owner
            day[mine] = np.sort(rng.choice(20, int(mine.sum()), replace=False))
        expected = detector.crossing_days(pd.DataFrame({"subject": subject, "day": day}))
        assert _enough_crossing_days(subject, day, days).tolist() == expected.tolist()
