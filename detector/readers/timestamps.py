"""The ts check: RFC 3339 times with an offset or epoch seconds, stored as UTC epoch seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from detector.readers.checks import Checked, flag, scatter, wrong_type_problems
from detector.readers.columns import Kind, RawColumn, null_mask, true_mask
from detector.readers.reasons import Problem

EARLIEST_EPOCH = 946_684_800.0  # 2000-01-01T00:00:00Z
END_EPOCH = 4_133_980_800.0  # 2101-01-01T00:00:00Z, the first second after 2100

# Date and time with a UTC offset. Arrow and pandas also take a space for "T" and
# "+hhmm" or "+hh" offsets, and so does this pattern.
TIME_WITH_OFFSET_PATTERN = (
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}(:?\d{2})?)$"
)
EPOCH_PATTERN = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
TIME_WITHOUT_OFFSET_PATTERN = r"^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$"
# The hour and minute of a time whose seconds are 60 (a leap second).
LEAP_SECOND_PATTERN = r"([Tt ]\d{2}:\d{2}):60(?=[.Zz+-]|$)"
LEAP_SECOND_TEST = r"[Tt ]\d{2}:\d{2}:60(?:[.Zz+-]|$)"
SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
UNIX_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def check_ts(column: RawColumn) -> Checked:
    """Check the request time and return it as UTC epoch seconds (float64)."""
    epochs = np.full(column.length, np.nan)
    errors = np.zeros(column.length, dtype=np.uint8)
    for part in column.parts:
        if part.kind is Kind.NUMBER:
            seconds = pc.cast(part.values, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
            problems = _missing_or(null_mask(part.values), ~np.isfinite(seconds), Problem.NOT_TIME)
        elif part.kind is Kind.STRING:
            seconds, problems = parse_time_strings(part.values)
        elif part.kind is Kind.TIMESTAMP:
            seconds, problems = _arrow_timestamps(part.values)
        elif part.kind is Kind.NULL:
            seconds, problems = np.nan, Problem.MISSING
        else:
            seconds, problems = np.nan, wrong_type_problems(part, Problem.NOT_TIME)
        scatter(epochs, part.rows, seconds)
        scatter(errors, part.rows, problems)

    out_of_range = (epochs < EARLIEST_EPOCH) | (epochs >= END_EPOCH)
    if out_of_range.any():
        numeric = _numeric_rows(column)
        flag(errors, out_of_range & numeric, Problem.EPOCH_OUT_OF_RANGE)
        flag(errors, out_of_range & ~numeric, Problem.YEAR_OUT_OF_RANGE)
    return Checked(epochs, errors)


def _numeric_rows(column: RawColumn) -> np.ndarray:
    """Return a mask of the rows whose ts was given as epoch seconds, as a number or a numeric string."""
    numeric = np.zeros(column.length, dtype=bool)
    for part in column.parts:
        if part.kind is Kind.NUMBER:
            scatter(numeric, part.rows, True)
        elif part.kind is Kind.STRING:
            scatter(numeric, part.rows, true_mask(pc.match_substring_regex(part.values, EPOCH_PATTERN)))
    return numeric


def parse_time_strings(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Return epoch seconds and problems for ts values given as strings.

    Arrow parses a batch of valid RFC 3339 times in one cast, and rejects times
    without an offset when the target type has a time zone. A batch of epoch
    seconds (as CSV has them) parses in one cast to float. The first value
    picks which cast to try first, because a failing timestamp cast costs
    about 1 us per value. When a batch mixes styles or has an invalid value,
    both casts fail and the values are parsed one by one.
    """
    absent = null_mask(strings)
    casts = (_cast_epoch_strings, _cast_rfc3339_strings)
    if not _starts_with_epoch(strings):
        casts = casts[::-1]
    for cast in casts:
        try:
            seconds = cast(strings)
        except pa.ArrowInvalid:
            continue
        return seconds, _missing_or(absent, ~np.isfinite(seconds) & ~absent, Problem.NOT_TIME)
    return _parse_time_strings_one_by_one(strings, absent)


def _starts_with_epoch(strings: pa.Array) -> bool:
    present = strings.drop_null()
    if len(present) == 0:
        return False
    try:
        float(present[0].as_py())
    except ValueError:
        return False
    return True


def _cast_rfc3339_strings(strings: pa.Array) -> np.ndarray:
    stamps = pc.cast(strings, pa.timestamp("ns", tz="UTC"))
    # Arrow (26.0.1) also accepts an hour without minutes ("2026-11-23T10Z",
    # "2026-11-23 10+08"), which TIME_WITH_OFFSET_PATTERN rejects. Every time the
    # pattern accepts has ":" at byte 13, so a batch with another byte there goes
    # to the value-by-value path, which rejects it.
    minute_separators = pc.binary_slice(strings.cast(pa.binary()), 13, 14)
    if pc.all(pc.equal(minute_separators, b":")).as_py() is False:
        raise pa.ArrowInvalid("a time has no minutes")
    return pc.fill_null(stamps.cast(pa.int64()), 0).to_numpy() / 1e9


def _cast_epoch_strings(strings: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.cast(strings, pa.float64()), 0.0).to_numpy(zero_copy_only=False)


def _parse_time_strings_one_by_one(strings: pa.Array, absent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    texts = pd.Series(strings.to_numpy(zero_copy_only=False), dtype=object)
    seconds = pd.to_numeric(texts, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    numeric = ~np.isnan(seconds)

    with_offset = true_mask(pc.match_substring_regex(strings, TIME_WITH_OFFSET_PATTERN))
    without_offset = true_mask(pc.match_substring_regex(strings, TIME_WITHOUT_OFFSET_PATTERN))
    dated = ~numeric & (with_offset | without_offset)
    parsed_seconds = _parse_dates(texts[dated])
    seconds[dated] = np.where(with_offset[dated], parsed_seconds, np.nan)

    problems = np.full(len(texts), Problem.NOT_TIME, dtype=np.uint8)
    problems[np.isfinite(seconds)] = Problem.OK
    naive = np.zeros(len(texts), dtype=bool)
    naive[dated] = without_offset[dated] & ~np.isnan(parsed_seconds)
    problems[naive] = Problem.NO_OFFSET
    problems[absent] = Problem.MISSING
    return seconds, problems


def _parse_dates(texts: pd.Series) -> np.ndarray:
    """Return ISO 8601 date-times as epoch seconds, NaN where invalid. Naive ones count as UTC.

    RFC 3339 allows a leap second, ``23:59:60``. Epoch seconds have none, so it
    is read as the second after ``:59``, the first second of the next minute,
    as POSIX time counts it.
    """
    if texts.empty:
        return np.empty(0)
    leap = texts.str.contains(LEAP_SECOND_TEST, regex=True).to_numpy(dtype=bool)
    if leap.any():
        texts = texts.str.replace(LEAP_SECOND_PATTERN, r"\1:59", regex=True)
    parsed = pd.to_datetime(texts.str.upper(), format="ISO8601", utc=True, errors="coerce")
    seconds = ((parsed - UNIX_EPOCH) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)
    return seconds + leap


def _arrow_timestamps(stamps: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Return epoch seconds for an Arrow timestamp array. One without a time zone is naive."""
    absent = null_mask(stamps)
    if stamps.type.tz is None:
        return np.full(len(stamps), np.nan), _missing_or(absent, ~absent, Problem.NO_OFFSET)

    counts = pc.fill_null(stamps.cast(pa.int64()), 0).to_numpy()
    seconds = counts / SECONDS_PER_UNIT[stamps.type.unit]
    return seconds, _missing_or(absent, np.zeros_like(absent), Problem.NOT_TIME)


def _missing_or(absent: np.ndarray, invalid: np.ndarray, problem: Problem) -> np.ndarray:
    """Return MISSING where absent, else problem where invalid, else OK."""
    return np.where(absent, Problem.MISSING, np.where(invalid, problem, Problem.OK)).astype(np.uint8)
