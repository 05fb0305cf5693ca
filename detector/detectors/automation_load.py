"""The automation detector's load measures over the trailing 10 minutes, shared by the batch and incremental paths."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from detector.features.prepare import composite_time, trailing_count
from detector.features.runs import run_starts

if TYPE_CHECKING:
    from detector.detectors.automation import AutomationDetector

WINDOW = 600.0
HOUR = 3600.0
WINDOW_MS = int(WINDOW * 1000)


def load_rows(
    detector: AutomationDetector,
    *,
    subject: np.ndarray,
    ts: np.ndarray,
    ts_ms: np.ndarray,
    prompt: np.ndarray,
    expected_rph: np.ndarray,
    candidates: np.ndarray | None,
) -> pd.DataFrame:
    """Return the scored load rows with a machine signal, before escalation, with their 10-minute ``bucket`` and ``detected_at``.

    The arrays hold one value per event, sorted by subject then time.
    ``prompt`` is a code per distinct prompt (-1 unknown) and ``expected_rph``
    is the plan's expected requests per hour. Only events in ``candidates``
    (all events when None) can give a row; the others are context. Every
    measure depends only on the subject's events in the trailing window, never
    on other subjects or earlier events, so any split of the input into chunks
    that carries the last 10 minutes gives the same rows.
    """
    per_window = expected_per_window(expected_rph)
    level = busy_level(detector, per_window)

    # Every measure below covers the trailing 10 minutes up to and including each request.
    keys = composite_time(subject, ts_ms)
    count = trailing_count(keys, WINDOW)
    busy = count >= level
    if candidates is not None:
        busy &= candidates
    if not busy.any():
        return pd.DataFrame()
    # Only busy events can be flagged, so every measure is taken at busy events only.
    positions = np.flatnonzero(busy)
    start = positions - count[positions] + 1

    parallel = trailing_count(keys, 1.0)
    waves = _trailing_sum((parallel == detector.min_parallel).astype(np.int64), start, positions)
    # Only subjects with a busy window can be flagged, so only their prompts are counted, and only from
    # the start of the first busy event's trailing window (with a second of margin).
    busy_subjects = np.isin(subject, np.unique(subject[busy])) & (ts >= ts[positions].min() - WINDOW - 1.0)
    prompts = np.where(busy_subjects, prompt, -1)
    same_prompt = _trailing_same_value_count(subject, ts_ms, prompts, WINDOW)[positions]
    del busy_subjects, prompts

    square_sum = _square_gap_sums(subject, ts_ms, start, positions)
    return score_load(
        detector,
        subject=subject[positions],
        ts=ts[positions],
        count=count[positions],
        per_window=per_window[positions],
        parallel=parallel[positions],
        waves=waves,
        same_prompt=same_prompt,
        square_sum=square_sum,
        span_ms=ts_ms[positions] - ts_ms[start],
    )


def expected_per_window(expected_rph: np.ndarray) -> np.ndarray:
    """Return the plan's expected requests per 10 minutes, at least 1."""
    return np.maximum(expected_rph * WINDOW / HOUR, 1.0)


def busy_level(detector: AutomationDetector, per_window: np.ndarray) -> np.ndarray:
    """Return the requests in the trailing window from which an event is busy enough to be scored."""
    return np.maximum(np.ceil(detector.min_load * per_window), detector.min_bucket_events)


def score_load(
    detector: AutomationDetector,
    *,
    subject: np.ndarray,
    ts: np.ndarray,
    count: np.ndarray,
    per_window: np.ndarray,
    parallel: np.ndarray,
    waves: np.ndarray,
    same_prompt: np.ndarray,
    square_sum: np.ndarray,
    span_ms: np.ndarray,
) -> pd.DataFrame:
    """Return the scored rows with a machine signal among busy events, given each event's window measures.

    Every array has one value per busy event, sorted by subject then time.
    ``count`` is the requests in the trailing window, ``square_sum`` the sum
    of squared gaps between them in whole ms and ``span_ms`` the time from
    the window's first request to the event.
    """
    cv, mean_gap = _gap_cv(square_sum, span_ms, count)
    load = count / per_window
    repeat_share = same_prompt / count
    signals = {
        "regular": (cv <= detector.max_regular_cv) & (mean_gap >= detector.min_regular_period),
        "repeated": repeat_share >= detector.min_repeat_share,
        "parallel_burst": waves >= detector.min_parallel_waves,
        "fast_pace": count >= detector.min_fast_requests,
    }
    # Columns are filtered as arrays and the frame is built once, because a stream chunk has few rows and
    # each pandas column operation costs about as much as the arithmetic.
    keep = signals["regular"] | signals["repeated"] | signals["parallel_burst"] | signals["fast_pace"]
    if not keep.any():
        return pd.DataFrame()
    signal_count = sum(signal[keep].astype(np.int64) for signal in signals.values())
    ts_kept = ts[keep]
    return pd.DataFrame(
        {
            "subject": subject[keep],
            "ts": ts_kept,
            "requests": count[keep],
            "load": load[keep],
            "cv": cv[keep],
            "mean_gap": mean_gap[keep],
            "repeat_share": repeat_share[keep],
            "max_parallel": parallel[keep],
            "parallel_waves": waves[keep],
            **{name: signal[keep] for name, signal in signals.items()},
            "score": np.clip(45 + 15 * signal_count + 10 * np.log2(load[keep]), 0, 100),
            "impact": load[keep],
            "bucket": (ts_kept // WINDOW).astype(np.int64),
            "detected_at": ts_kept,
        }
    )


def _gap_cv(square_sum: np.ndarray, span_ms: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the CV of the gaps inside each window and the mean gap in seconds, from whole milliseconds."""
    gaps = np.maximum(count - 1, 1)
    mean_gap_ms = span_ms / gaps
    variance = np.maximum(square_sum / gaps - mean_gap_ms**2, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(mean_gap_ms > 0, np.sqrt(variance) / mean_gap_ms, np.inf)
    return cv, mean_gap_ms / 1000.0


def _square_gap_sums(subject: np.ndarray, ts_ms: np.ndarray, start: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Return the sum of squared gaps in whole ms between the requests of each window.

    Squared gaps are summed as integers: a running float sum over all events
    would round differently with every other subject in the input, and a
    nearly even cadence (variance close to 0) makes that rounding visible in
    the CV. Gaps of a window or more are zeroed, since they never lie inside a
    window, so each window's sum is below 600,000² and exact even where the
    running int64 sum wraps around.
    """
    gap_ms = np.diff(ts_ms, prepend=ts_ms[:1])
    gap_ms[run_starts(subject)] = 0
    gap_ms[gap_ms >= WINDOW_MS] = 0
    # Gaps between requests inside the window: the gap into its first request is outside.
    return _trailing_sum(gap_ms * gap_ms, np.minimum(start + 1, positions + 1), positions)


def _trailing_sum(values: np.ndarray, start: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Sum ``values`` over the trailing window of the events at ``positions``, given each window's first index."""
    totals = np.concatenate(([0], np.cumsum(values)))
    return totals[positions + 1] - totals[start]


def _trailing_same_value_count(subject: np.ndarray, ts_ms: np.ndarray, values: np.ndarray, seconds: float) -> np.ndarray:
    """Count, at each event, the subject's events with the same value in the trailing window.

    Events whose value is negative (unknown) count 0.
    """
    counts = np.zeros(len(subject), dtype=np.int64)
    known = np.flatnonzero(values >= 0)
    if not len(known):
        return counts

    pairs = pd.DataFrame({"subject": subject[known], "value": values[known]})
    group = pairs.groupby(["subject", "value"], sort=False).ngroup().to_numpy().astype(np.int64)
    known_ms = ts_ms[known]
    relative = known_ms - known_ms.min()
    order = np.lexsort((relative, group))
    keys = (group[order] << 41) | relative[order]
    starts = np.searchsorted(keys, keys - int(seconds * 1000), side="right")
    counts[known[order]] = np.arange(len(keys)) - starts + 1
    return counts
