"""Robust spend baselines of abnormal_cost: median, MAD and busy bin of each subject's active clock bins, as arrays.

The statistics are computed by sorting (subject, value) pairs and reducing
runs, with the formulas of pandas' group-by ``median`` and linear
``quantile``, so the figures equal those of the group-by they replace
(tests/test_cost_baseline.py compares them with pandas 3.1). A chunk of a
few hundred events then spends no time building frames.
"""

from __future__ import annotations

import numpy as np

from detector.features.runs import run_starts
from detector.features.spend_bins import MICRO, MINUTES_PER_DAY

# Named numpy columns of equal length.
Columns = dict[str, np.ndarray]
# Days of active bins before an event's day that its baseline reads.
BASELINE_DAYS = 7


def sorted_median(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Return the median of each run of ``values`` (float64, sorted within runs), given the rows where runs start.

    An even run takes the mean of its two middle values, as pandas does.
    """
    sizes = np.diff(np.append(starts, len(values)))
    upper = values[starts + sizes // 2]
    lower = values[starts + (sizes - 1) // 2]
    return np.where(sizes % 2 == 1, upper, (upper + lower) / 2)


def sorted_quantile(values: np.ndarray, starts: np.ndarray, q: float) -> np.ndarray:
    """Return the ``q`` quantile of each run of ``values`` (float64, sorted within runs), interpolated linearly as pandas does."""
    sizes = np.diff(np.append(starts, len(values)))
    position = q * (sizes - 1).astype(np.float64)
    index = position.astype(np.int64)
    fraction = np.fmod(position, 1.0)
    low = values[starts + index]
    high = values[starts + np.minimum(index + 1, sizes - 1)]
    return np.where(fraction == 0.0, low, low + (high - low) * fraction)


def baseline_for_day(bins: Columns, day: int, peak_quantile: float) -> Columns:
    """Return per subject with active bins in the 7 days before ``day``: median, MAD, busy bin and bin count.

    ``bins`` has ``subject``, ``day`` and ``cost`` (micro-credits) per active
    bin. The median, MAD and busy bin (the ``peak_quantile`` of the bins) are
    in micro-credits.
    """
    chosen = (bins["day"] >= day - BASELINE_DAYS) & (bins["day"] < day)
    subject = bins["subject"][chosen].astype(np.int64)
    cost = bins["cost"][chosen].astype(np.float64)
    if not len(subject):
        empty = np.empty(0, np.float64)
        return {"subject": subject, "median": empty, "mad": empty, "peak": empty, "history_hours": np.empty(0, np.int64)}

    order = np.lexsort((cost, subject))
    subject, cost = subject[order], cost[order]
    starts = run_starts(subject)
    median = sorted_median(cost, starts)
    peak = sorted_quantile(cost, starts, peak_quantile)

    group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(cost))))
    deviation = np.abs(cost - median[group])
    deviation = deviation[np.lexsort((deviation, group))]
    return {
        "subject": subject[starts],
        "median": median,
        "mad": sorted_median(deviation, starts),
        "peak": peak,
        "history_hours": np.diff(np.append(starts, len(cost))),
    }


def baseline_per_event(
    subject_at: np.ndarray, minute_at: np.ndarray, bins: Columns, peak_quantile: float
) -> Columns:
    """Return ``median``, ``mad``, ``peak`` (credits, NaN without history) and ``history_hours`` per event.

    Each event, given by its subject code and UTC minute, reads the baseline
    of its subject for its UTC day (``baseline_for_day``).
    """
    day_at = minute_at // MINUTES_PER_DAY
    days = np.unique(day_at)
    per_day = [(int(day), baseline_for_day(bins, int(day), peak_quantile)) for day in days]

    # Gather by a dense (subject, day) index instead of merging per event.
    first_day = int(days.min()) if len(days) else 0
    width = int(days.max()) - first_day + 1 if len(days) else 1
    subjects = int(subject_at.max()) + 1 if len(subject_at) else 0
    found = np.full(subjects * width, -1, dtype=np.int64)
    offset = 0
    for day, baseline in per_day:
        found[baseline["subject"] * width + (day - first_day)] = offset + np.arange(len(baseline["subject"]))
        offset += len(baseline["subject"])
    rows = found[subject_at * width + (day_at - first_day)] if len(subject_at) else np.empty(0, np.int64)
    known = rows >= 0

    result: Columns = {}
    for name in ("median", "mad", "peak"):
        values = np.full(len(rows), np.nan)
        if per_day:
            values[known] = np.concatenate([baseline[name] for _, baseline in per_day])[rows[known]] / MICRO
        result[name] = values
    history = np.zeros(len(rows), dtype=np.int64)
    if per_day:
        history[known] = np.concatenate([baseline["history_hours"] for _, baseline in per_day])[rows[known]]
    result["history_hours"] = history
    return result
