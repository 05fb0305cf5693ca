"""Spend on whole-minute bins in integer micro-credits: the arithmetic abnormal_cost and its state share."""

import numpy as np
import pytest

from detector.features.spend_bins import (
    clock_bin_peak,
    clock_bin_spend,
    day_of_bin,
    minute_of,
    minute_spend,
    rolling_spend,
    to_micro,
)

# 2026-11-23T10:00:00Z in whole minutes since the epoch.
TEN_O_CLOCK = 1795392000 // 60 + 600


def test_micro_rounds_tiny_costs():
    micro = to_micro(np.array([0.000001, 0.0000006, 0.0000004, 0.0000005, 0.0000015, 1e-9, 0.0]))

    assert micro.dtype == np.int64
    assert micro.tolist() == [1, 1, 0, 0, 2, 0, 0]


def test_micro_sums_do_not_depend_on_order():
    costs = np.array([0.1, 0.2, 0.3, 1e6, 0.7, 1e-6])

    forward = to_micro(costs).sum()
    backward = to_micro(costs[::-1]).sum()

    assert forward == backward == 1_000_001_300_001


def test_minute_of_milliseconds():
    ts_ms = np.array([0, 59_999, 60_000, 119_999, 120_000])

    assert minute_of(ts_ms).tolist() == [0, 0, 1, 1, 2]


def test_hour_window_covers_59_minutes_before():
    # One subject: 09:00:59, 09:01:00, 09:59:30, then two requests in the 10:00 minute.
    minute = np.array([-60, -59, -1, 0, 0]) + TEN_O_CLOCK
    micro = np.array([1, 10, 100, 1_000, 10_000])

    spend = rolling_spend(np.zeros(5, dtype=np.int64), minute, micro, 60)

    # 09:00 is 60 minutes before 10:00, so it is outside; 09:01 is the first minute inside.
    assert spend.tolist() == [1, 11, 111, 1_110, 11_110]


def test_one_minute_window_is_own_minute_so_far():
    minute = np.array([0, 0, 1, 1]) + TEN_O_CLOCK
    micro = np.array([5, 7, 11, 13])

    spend = rolling_spend(np.zeros(4, dtype=np.int64), minute, micro, 1)

    assert spend.tolist() == [5, 12, 11, 24]


def test_window_never_crosses_subjects():
    subject = np.array([0, 0, 1, 1])
    minute = np.array([0, 1, 1, 2]) + TEN_O_CLOCK
    micro = np.array([3, 4, 50, 60])

    spend = rolling_spend(subject, minute, micro, 10)

    assert spend.tolist() == [3, 7, 50, 110]


def test_window_of_zero_minutes_rejected():
    with pytest.raises(ValueError, match="window_minutes must be at least 1"):
        rolling_spend(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64), 0)


def _random_requests(rng, subjects=4, size=600):
    subject = np.sort(rng.integers(0, subjects, size))
    minute = np.empty(size, dtype=np.int64)
    for code in range(subjects):
        rows = subject == code
        minute[rows] = np.sort(rng.integers(TEN_O_CLOCK, TEN_O_CLOCK + 3 * 1440, rows.sum()))
    micro = rng.integers(0, 400_000, size)
    return subject, minute, micro


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_minute_bins_then_new_requests_match_raw(seed):
    """State path: per-minute bins of the past, the current minute's running sum, then the new requests."""
    rng = np.random.default_rng(seed)
    subject, minute, micro = _random_requests(rng)
    split = int(rng.integers(100, 500))
    old, new = slice(0, split), slice(split, None)

    bins = minute_spend(subject[old], minute[old], micro[old])
    columns = [
        np.concatenate([past, requests[new]]) for past, requests in zip(bins, (subject, minute, micro), strict=True)
    ]
    is_new = np.arange(len(columns[0])) >= len(bins[0])
    # A stable sort keeps each minute's bin before the new requests of that minute.
    order = np.lexsort((columns[1], columns[0]))
    columns = [values[order] for values in columns]
    is_new = is_new[order]

    for window in (10, 60, 1440):
        from_state = rolling_spend(*columns, window)[is_new]
        from_raw = rolling_spend(subject, minute, micro, window)[new]
        assert from_state.tolist() == from_raw.tolist(), f"window {window}"


def test_baseline_bins_from_minute_bins_match_raw():
    rng = np.random.default_rng(7)
    subject, minute, micro = _random_requests(rng)
    bins = minute_spend(subject, minute, micro)

    raw_peak = clock_bin_peak(subject, minute, rolling_spend(subject, minute, micro, 10), 10)
    bin_peak = clock_bin_peak(bins[0], bins[1], rolling_spend(*bins, 10), 10)
    raw_hours = clock_bin_spend(subject, minute, micro, 60)
    bin_hours = clock_bin_spend(*bins, 60)

    for raw, binned in zip(raw_peak + raw_hours, bin_peak + bin_hours, strict=True):
        assert raw.tolist() == binned.tolist()


def test_clock_bin_spend_sums_each_hour():
    subject = np.array([0, 0, 0, 1])
    minute = np.array([0, 59, 60, 30]) + TEN_O_CLOCK
    micro = np.array([1, 2, 4, 8])

    bin_subject, hour, spend = clock_bin_spend(subject, minute, micro, 60)

    assert bin_subject.tolist() == [0, 0, 1]
    assert (hour - TEN_O_CLOCK // 60).tolist() == [0, 1, 0]
    assert spend.tolist() == [3, 4, 8]


def test_clock_bins_of_empty_arrays():
    empty = np.array([], dtype=np.int64)

    for bins in (clock_bin_spend(empty, empty, empty, 60), clock_bin_peak(empty, empty, empty, 10)):
        assert [len(values) for values in bins] == [0, 0, 0]


def test_day_of_bin_rejects_bins_across_days():
    assert day_of_bin(np.array([143, 144]), 10).tolist() == [0, 1]
    with pytest.raises(ValueError, match="divide a day"):
        day_of_bin(np.array([1]), 7)
