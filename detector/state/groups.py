"""Group-by steps on plain numpy arrays, for state updates whose chunks are too small to pay for pandas group-bys.

Each function matches the pandas call named in its docstring, for integer
key columns without missing values.
"""

from __future__ import annotations

import numpy as np

from detector.features.runs import run_numbers, run_starts


def group_codes(*keys: np.ndarray) -> np.ndarray:
    """Number the distinct rows of ``keys`` from 0 in order of first appearance.

    Matches ``DataFrame.groupby(keys, sort=False).ngroup()``.
    """
    size = len(keys[0])
    if size == 0:
        return np.empty(0, np.int64)

    # lexsort is stable, so the first row of each sorted run is that group's first appearance.
    order = np.lexsort(keys[::-1])
    starts = run_starts(*(key[order] for key in keys))
    rank = np.empty(len(starts), np.int64)
    rank[np.argsort(order[starts], kind="stable")] = np.arange(len(starts))

    codes = np.empty(size, np.int64)
    codes[order] = rank[run_numbers(starts, size)]
    return codes


def first_in_group(codes: np.ndarray) -> np.ndarray:
    """Mark each group's first row. Matches ``~DataFrame.duplicated(keys)`` with ``codes`` from ``group_codes``."""
    first = np.zeros(len(codes), bool)
    if len(codes):
        first[np.unique(codes, return_index=True)[1]] = True
    return first


def position_in_group(codes: np.ndarray, *, from_end: bool = False) -> np.ndarray:
    """Number each row within its group from 0, in row order or, with ``from_end``, from the group's last row.

    Matches ``groupby(codes).cumcount(ascending=not from_end)``.
    """
    size = len(codes)
    order = np.argsort(codes, kind="stable")
    starts = run_starts(codes[order]) if size else np.empty(0, np.int64)
    lengths = np.diff(np.append(starts, size))
    ordered = np.arange(size) - np.repeat(starts, lengths)
    if from_end:
        ordered = np.repeat(lengths, lengths) - 1 - ordered
    position = np.empty(size, np.int64)
    position[order] = ordered
    return position


def previous_in_group(values: np.ndarray, codes: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """Return each row's value at the previous row of its group, ``fill`` at a group's first row.

    Matches ``Series(values).groupby(codes).shift(1)``. The result is float64.
    """
    order = np.argsort(codes, kind="stable")
    ordered = values[order].astype(np.float64)
    shifted = np.empty(len(values), np.float64)
    if len(values):
        shifted[1:] = ordered[:-1]
        shifted[run_starts(codes[order])] = fill
    previous = np.empty(len(values), np.float64)
    previous[order] = shifted
    return previous


def group_min(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Return, at each row, the minimum of ``values`` over its group. Matches ``groupby(codes).transform("min")``."""
    if not len(values):
        return values.copy()
    lowest = np.full(int(codes.max()) + 1, np.inf)
    np.minimum.at(lowest, codes, values)
    return lowest[codes]


def rows_in(keys: tuple[np.ndarray, ...], targets: tuple[np.ndarray, ...]) -> np.ndarray:
    """Mark the rows of ``keys`` that equal some row of ``targets`` (the same columns, in the same order)."""
    size = len(keys[0])
    codes = group_codes(*(np.concatenate([key, other]) for key, other in zip(keys, targets)))
    found = np.zeros(int(codes.max()) + 1 if len(codes) else 0, bool)
    found[codes[size:]] = True
    return found[codes[:size]]
