"""Spend in integer micro-credits on a grid of whole UTC minutes, per subject.

Every function here takes parallel arrays of subject code, minute (whole
minutes since the epoch) and micro-credits, sorted by subject then time, and
returns arrays. A row may be one request or a minute bin that stands for
several: a caller that keeps per-minute spend as state passes its bins
followed by the new requests and gets the same sums as from the raw requests.
Integer sums are exact, so a result depends only on the subject's own rows
and never on which other rows the arrays hold or the order of addition.

Window convention: the rolling spend over a window of ``W`` minutes at a
request is the subject's spend in the ``W - 1`` whole minutes before the
request's minute, plus its requests in that minute up to and including this
one. At 10:30:20 a 60-minute window therefore covers 09:31:00 to 10:30:20, so
the window never reaches back more than ``W`` minutes and covers at least
``W - 1``.
"""

from __future__ import annotations

import numpy as np

from detector.features.runs import run_starts

MICRO = 1_000_000
MINUTE_MS = 60_000
MINUTES_PER_DAY = 1440
# Bits kept for the minute in the composite (subject, minute) key: minutes within 2**31 of the epoch
# (about 4,000 years either way) keep the keys in (subject, minute) order.
_MINUTE_BITS = 32


def to_micro(cost: np.ndarray) -> np.ndarray:
    """Return ``cost`` (credits) as int64 micro-credits, rounded to the nearest (halves to even, as ``np.rint``).

    A request costing less than half a micro-credit counts as 0.
    """
    return np.rint(np.asarray(cost, dtype=np.float64) * MICRO).astype(np.int64)


def minute_of(ts_ms: np.ndarray) -> np.ndarray:
    """Return the UTC minute (whole minutes since the epoch) of each millisecond timestamp."""
    return np.asarray(ts_ms, dtype=np.int64) // MINUTE_MS


def rolling_spend(subject: np.ndarray, minute: np.ndarray, micro: np.ndarray, window_minutes: int) -> np.ndarray:
    """Return, per row, the subject's spend over the trailing ``window_minutes`` (see the module's convention).

    Rows must be sorted by subject, then minute. Rows of one minute count up
    to and including the row itself, so a minute's bin must come before the
    requests added to that minute.
    """
    if window_minutes < 1:
        raise ValueError(f"window_minutes must be at least 1, got {window_minutes}")
    keys = (np.asarray(subject, dtype=np.int64) << _MINUTE_BITS) + np.asarray(minute, dtype=np.int64)
    totals = np.concatenate(([0], np.cumsum(micro, dtype=np.int64)))
    starts = np.searchsorted(keys, keys - (window_minutes - 1), side="left")
    return totals[1:] - totals[starts]


def minute_spend(
    subject: np.ndarray, minute: np.ndarray, micro: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (subject, minute, spend) per (subject, minute) that has rows: the state ``rolling_spend`` needs."""
    return clock_bin_spend(subject, minute, micro, 1)


def clock_bin_spend(
    subject: np.ndarray, minute: np.ndarray, micro: np.ndarray, bin_minutes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (subject, bin, spend) per (subject, clock bin of ``bin_minutes``) that has rows.

    Bin ``b`` covers minutes ``b * bin_minutes`` to ``(b + 1) * bin_minutes - 1``.
    Rows must be sorted by subject, then minute.
    """
    return _reduce_per_clock_bin(np.add, subject, minute, micro, bin_minutes)


def clock_bin_peak(
    subject: np.ndarray, minute: np.ndarray, rolling: np.ndarray, bin_minutes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (subject, bin, highest ``rolling`` spend at a row in the bin) per clock bin that has rows.

    Costs are never negative, so a minute's highest rolling spend is at its
    last row, and the peak can be kept from minute bins alone.
    """
    return _reduce_per_clock_bin(np.maximum, subject, minute, rolling, bin_minutes)


def _reduce_per_clock_bin(
    reduce: np.ufunc, subject: np.ndarray, minute: np.ndarray, values: np.ndarray, bin_minutes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    time_bin = np.asarray(minute, dtype=np.int64) // bin_minutes
    starts = run_starts(subject, time_bin)
    values = np.asarray(values, dtype=np.int64)
    # reduceat rejects an empty list of starts.
    reduced = reduce.reduceat(values, starts) if len(starts) else values[:0]
    return np.asarray(subject)[starts], time_bin[starts], reduced


def day_of_bin(time_bin: np.ndarray, bin_minutes: int) -> np.ndarray:
    """Return the UTC day (whole days since the epoch) of each clock bin.

    Raises ValueError unless ``bin_minutes`` divides a day, because a bin must not span two days.
    """
    if MINUTES_PER_DAY % bin_minutes:
        raise ValueError(f"bin_minutes must divide a day of 1440 minutes, got {bin_minutes}")
    return np.asarray(time_bin, dtype=np.int64) * bin_minutes // MINUTES_PER_DAY
