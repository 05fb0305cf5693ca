"""Robust spend baselines as arrays: the same figures as pandas' group-by median and quantile."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detector.detectors.cost_baseline import baseline_for_day, baseline_per_event, sorted_median, sorted_quantile
from detector.features.runs import run_starts
from detector.features.spend_bins import MICRO, MINUTES_PER_DAY

DAY = 20_415


def _sorted_groups(sizes: list[int], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return group codes, values sorted within groups (float64 from integer micro-credits) and group starts."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(len(sizes)), sizes)
    values = rng.integers(0, 5_000_000, len(group)).astype(np.float64)
    order = np.lexsort((values, group))
    return group[order], values[order], run_starts(group[order])


def _pandas_baseline(bins: dict[str, np.ndarray], day: int, quantile: float) -> pd.DataFrame:
    """The group-by baseline that the arrays replace, as a reference."""
    binned = pd.DataFrame(bins)
    history = binned[(binned["day"] >= day - 7) & (binned["day"] < day)]
    grouped = history.groupby("subject")["cost"]
    median = grouped.median()
    deviation = (history["cost"] - history["subject"].map(median)).abs()
    return pd.DataFrame(
        {
            "median": median,
            "mad": deviation.groupby(history["subject"]).median(),
            "peak": grouped.quantile(quantile),
            "history_hours": grouped.size(),
        }
    )


def _bins(subjects: int, bins: int, seed: int, days: int = 9) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "subject": rng.integers(0, subjects, bins),
        "day": DAY - days + rng.integers(0, days + 1, bins),
        "cost": rng.integers(1, 3_000_000, bins),
    }


@pytest.mark.parametrize("seed", range(5))
def test_sorted_median_equals_pandas(seed):
    group, values, starts = _sorted_groups([1, 2, 3, 4, 7, 10, 1], seed)

    expected = pd.Series(values).groupby(group).median().to_numpy()

    np.testing.assert_array_equal(sorted_median(values, starts), expected)


def test_sorted_median_of_two_halves():
    values = np.array([1.0, 2.0, 5.0, 5.0, 0.5, 0.5, 0.5, 0.75])

    assert sorted_median(values, np.array([0, 2, 4])).tolist() == [1.5, 5.0, 0.5]


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.95, 1.0])
def test_sorted_quantile_equals_pandas(q):
    group, values, starts = _sorted_groups([1, 2, 3, 5, 20, 21, 99], seed=7)

    expected = pd.Series(values).groupby(group).quantile(q).to_numpy()

    np.testing.assert_array_equal(sorted_quantile(values, starts, q), expected)


@pytest.mark.parametrize("seed", range(4))
def test_baseline_for_day_equals_pandas(seed):
    bins = _bins(subjects=12, bins=400, seed=seed)

    baseline = baseline_for_day(bins, DAY, 0.95)
    expected = _pandas_baseline(bins, DAY, 0.95)

    np.testing.assert_array_equal(baseline["subject"], expected.index.to_numpy())
    for name in ("median", "mad", "peak", "history_hours"):
        np.testing.assert_array_equal(baseline[name], expected[name].to_numpy(), err_msg=name)


def test_baseline_for_day_reads_seven_days_before():
    bins = {"subject": np.zeros(4, np.int64), "day": np.array([DAY - 8, DAY - 7, DAY - 1, DAY]), "cost": np.array([9, 1, 3, 100])}

    baseline = baseline_for_day(bins, DAY, 0.95)

    assert baseline["history_hours"].tolist() == [2]
    assert baseline["median"].tolist() == [2.0]


def test_baseline_constant_spend_has_mad_zero():
    bins = {"subject": np.zeros(30, np.int64), "day": np.repeat(DAY - np.arange(1, 7), 5), "cost": np.full(30, 50_000)}

    baseline = baseline_for_day(bins, DAY, 0.95)

    assert baseline["mad"].tolist() == [0.0]
    assert baseline["median"].tolist() == baseline["peak"].tolist() == [50_000.0]


def test_baseline_one_bin():
    bins = {"subject": np.array([3]), "day": np.array([DAY - 1]), "cost": np.array([70])}

    baseline = baseline_for_day(bins, DAY, 0.95)

    assert baseline["subject"].tolist() == [3]
    assert [baseline[name].tolist() for name in ("median", "mad", "peak")] == [[70.0], [0.0], [70.0]]
    assert baseline["history_hours"].tolist() == [1]


def test_baseline_without_bins():
    empty = {"subject": np.empty(0, np.int64), "day": np.empty(0, np.int64), "cost": np.empty(0, np.int64)}

    baseline = baseline_for_day(empty, DAY, 0.95)

    assert all(len(column) == 0 for column in baseline.values())


def test_baseline_per_event_without_history():
    bins = {"subject": np.array([0]), "day": np.array([DAY]), "cost": np.array([5])}
    minute = np.array([DAY * MINUTES_PER_DAY + 10])

    baseline = baseline_per_event(np.array([0]), minute, bins, 0.95)

    assert np.isnan(baseline["median"]).all()
    assert np.isnan(baseline["mad"]).all()
    assert baseline["history_hours"].tolist() == [0]


def test_baseline_per_event_without_events():
    baseline = baseline_per_event(np.empty(0, np.int64), np.empty(0, np.int64), _bins(2, 10, seed=1), 0.95)

    assert all(len(column) == 0 for column in baseline.values())


def test_baseline_per_event_reads_each_events_day():
    bins = _bins(subjects=3, bins=300, seed=3, days=10)
    subject = np.array([0, 2, 1, 0])
    day = np.array([DAY, DAY, DAY - 1, DAY - 1])

    baseline = baseline_per_event(subject, day * MINUTES_PER_DAY + 600, bins, 0.95)

    for position in range(len(subject)):
        expected = _pandas_baseline(bins, int(day[position]), 0.95).loc[subject[position]]
        assert baseline["median"][position] == expected["median"] / MICRO
        assert baseline["mad"][position] == expected["mad"] / MICRO
        assert baseline["peak"][position] == expected["peak"] / MICRO
        assert baseline["history_hours"][position] == expected["history_hours"]
