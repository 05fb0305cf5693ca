"""Per-run reductions over events sorted by subject and time, where a run is a block of consecutive rows."""

from __future__ import annotations

import numpy as np
import pandas as pd


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """Return the rows where any of ``keys`` differs from the row before (row 0 included)."""
    start = np.zeros(len(keys[0]), dtype=bool)
    start[:1] = True
    for key in keys:
        start[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(start)


def run_numbers(starts: np.ndarray, length: int) -> np.ndarray:
    """Return, for each of ``length`` rows, the number of the run it is in, given where runs start."""
    marks = np.zeros(length, dtype=np.int64)
    marks[starts] = 1
    return np.cumsum(marks) - 1


def _pairs(run: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, int]:
    """Return (run, value) pairs packed into one int64 per event; negative values are dropped."""
    known = values >= 0
    width = int(values.max()) + 1 if known.any() else 1
    return run[known] * width + values[known], width


def _is_sorted(values: np.ndarray) -> bool:
    return bool(np.all(values[1:] >= values[:-1]))


def distinct_per_run(run: np.ndarray, values: np.ndarray, runs: int) -> np.ndarray:
    """Count distinct non-negative ``values`` in each run."""
    pairs, width = _pairs(run, values)
    # Values that only grow within a run (time buckets) need no hashing: each change is a new value.
    unique = pairs[run_starts(pairs)] if len(pairs) and _is_sorted(pairs) else pd.unique(pairs)
    return np.bincount(unique // width, minlength=runs)


def max_count_per_run(run: np.ndarray, values: np.ndarray, runs: int) -> np.ndarray:
    """Return, per run, how often its most frequent non-negative value occurs (0 if none)."""
    best = np.zeros(runs, dtype=np.int64)
    pairs, width = _pairs(run, values)
    if not len(pairs):
        return best

    if not _is_sorted(pairs):
        pairs = np.sort(pairs)
    starts = run_starts(pairs)
    counts = np.diff(np.append(starts, len(pairs)))
    pair_runs = pairs[starts] // width
    # Pairs are sorted, so each run's values are consecutive.
    first_of_run = run_starts(pair_runs)
    best[pair_runs[first_of_run]] = np.maximum.reduceat(counts, first_of_run)
    return best
