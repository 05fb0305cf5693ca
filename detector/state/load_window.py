"""Each subject's requests with running sums, so that a new request's 10-minute load measures cost O(log n) to read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.detectors.automation_load import WINDOW_MS
from detector.features.runs import run_starts
from detector.state.chunk import UNKNOWN_PROMPT
from detector.state.pair_counts import PairCounts
from detector.state.segments import GrowingSegments, search_segments
from detector.state.table import _segment_index

PARALLEL_MS = 1000
# Bits of an array index in a composite (owner, index) key.
_INDEX_BITS = 40

# ``cum_waves`` and ``cum_square_gaps`` are running sums over the subject's rows up to and including each row.
# Only differences within one segment are read, so their starting value does not matter, and int64 wrap-around
# leaves those differences exact.
ROW_COLUMNS = {
    "ts_ms": "int64",
    "prompt": "uint64",
    "wave": "int8",
    "cum_waves": "int64",
    "cum_square_gaps": "int64",
}


@dataclass(slots=True)
class WindowMeasures:
    """The trailing-window measures of appended rows, one value per row."""

    count: np.ndarray
    parallel: np.ndarray
    waves: np.ndarray
    same_prompt: np.ndarray
    square_sum: np.ndarray
    span_ms: np.ndarray


class LoadWindows:
    """The requests of each subject's last ``retention_ms``, with running sums and per-prompt counts over its window.

    Rows are appended in time order, so a subject with a late row is
    ``forget``-ed and appended again. A new row's count of requests in the
    trailing 10 minutes and in the trailing second come from the window's
    first row, found by bisection. Its sum of wave flags and of squared gaps
    are differences of running sums at that row and at itself. The
    same-prompt count comes from ``prompt_counts``, which counts each
    subject's prompts from row ``count_from`` (the window start of its last
    row) to its end, plus the rows added and minus the rows left behind within
    the batch. Windows are positional, as in ``load_rows``: a row's window
    ends at the row itself, never at a later row of the same millisecond.
    """

    def __init__(self, *, retention_ms: int, min_parallel: int) -> None:
        self.retention_ms = retention_ms
        self.min_parallel = min_parallel
        self.segments = GrowingSegments(ROW_COLUMNS)
        self.prompt_counts = PairCounts()

    def nbytes(self) -> int:
        """Return the bytes of the rows and the prompt counts."""
        return self.segments.nbytes() + self.prompt_counts.nbytes()

    def append(self, slots: np.ndarray, count_from: np.ndarray, owner: np.ndarray, ts_ms: np.ndarray, prompt: np.ndarray) -> tuple[WindowMeasures, np.ndarray]:
        """Append rows and return their measures and each slot's new ``count_from`` (the same where it has no new rows).

        ``owner`` is each row's position in ``slots`` (sorted), and each
        owner's rows are sorted by time and no older than its stored rows.
        """
        index = self.segments.append(slots, owner, {"ts_ms": ts_ms, "prompt": prompt})
        low = self.segments.start[slots][owner]
        column = self.segments.columns["ts_ms"]
        # One bisection for both windows: the first half of the queries finds the 10-minute starts.
        starts = search_segments(
            column, np.tile(low, 2), np.tile(index, 2), np.concatenate((ts_ms - WINDOW_MS, ts_ms - PARALLEL_MS))
        )
        start = starts[: len(index)]
        parallel = index - starts[len(index) :] + 1
        self._write_running_sums(index, low, owner, parallel)

        same_prompt, new_count_from = self._same_prompt_counts(slots, count_from, owner, index, start)
        measures = WindowMeasures(
            count=index - start + 1,
            parallel=parallel,
            waves=self._window_sum("wave", "cum_waves", start, index),
            same_prompt=same_prompt,
            square_sum=self.segments.columns["cum_square_gaps"][index] - self.segments.columns["cum_square_gaps"][start],
            span_ms=ts_ms - column[start],
        )
        return measures, new_count_from

    def rows_of(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return every kept row of ``slots``: its position in ``slots``, ``ts_ms`` and ``prompt``."""
        lengths = self.segments.length[slots]
        index = _segment_index(self.segments.start[slots], lengths)
        owner = np.repeat(np.arange(len(slots)), lengths)
        return owner, self.segments.columns["ts_ms"][index], self.segments.columns["prompt"][index]

    def forget(self, slots: np.ndarray, count_from: np.ndarray) -> np.ndarray:
        """Drop every row of ``slots`` and their prompt counts, and return the ``count_from`` of the emptied segments.

        A subject with a late row is forgotten and its rows, old and new, appended again in time order.
        """
        start = self._array_index(slots, count_from)
        ends = self.segments.end(slots)
        counted = _segment_index(start, ends - start)
        owner = np.repeat(slots, ends - start)
        prompt = self.segments.columns["prompt"][counted]
        known = prompt != UNKNOWN_PROMPT
        self.prompt_counts.add(owner[known], prompt[known], np.full(int(known.sum()), -1))
        self.segments.clear(slots)
        return self.segments.first_number[slots].copy()

    def trim(self, slots: np.ndarray, last_ms: np.ndarray, count_from: np.ndarray) -> None:
        """Drop the rows of each slot at or before its ``last_ms`` minus the retention, never from ``count_from`` on."""
        low = self.segments.start[slots]
        first_kept = search_segments(self.segments.columns["ts_ms"], low, self.segments.end(slots), last_ms - self.retention_ms)
        first_kept = np.minimum(first_kept, self._array_index(slots, count_from))
        self.segments.drop_front(slots, first_kept - low)

    def _array_index(self, slots: np.ndarray, number: np.ndarray) -> np.ndarray:
        return self.segments.start[slots] + (number - self.segments.first_number[slots])

    def _write_running_sums(self, index: np.ndarray, low: np.ndarray, owner: np.ndarray, parallel: np.ndarray) -> None:
        """Write the wave flag, the running wave count and the running sum of squared gaps of appended rows."""
        columns = self.segments.columns
        has_previous = index > low
        previous = np.where(has_previous, index - 1, index)
        gap = columns["ts_ms"][index] - columns["ts_ms"][previous]
        gap[gap >= WINDOW_MS] = 0
        wave = (parallel == self.min_parallel).astype(np.int8)
        columns["wave"][index] = wave

        first = run_starts(owner) if len(owner) else np.empty(0, np.int64)
        # A run's first row continues from the stored row before it, and the first row of an empty segment from 0.
        base_waves = np.where(has_previous[first], columns["cum_waves"][previous[first]], 0)
        base_squares = np.where(has_previous[first], columns["cum_square_gaps"][previous[first]], 0)
        columns["cum_waves"][index] = _running_sum(wave.astype(np.int64), first, base_waves)
        columns["cum_square_gaps"][index] = _running_sum(gap * gap, first, base_squares)

    def _window_sum(self, flag: str, running: str, start: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Sum ``flag`` over the rows from ``start`` to ``index``, both included."""
        columns = self.segments.columns
        return columns[running][index] - columns[running][start] + columns[flag][start].astype(np.int64)

    def _same_prompt_counts(
        self, slots: np.ndarray, count_from: np.ndarray, owner: np.ndarray, index: np.ndarray, start: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return each appended row's count of its prompt in its window, and each slot's new ``count_from``.

        Before the batch, ``prompt_counts`` counts each slot's rows from
        ``count_from``. A row enters the count at its own position and a
        stored or appended row leaves it before the first appended row whose
        window starts after it. Sorting both kinds of event by (slot, prompt,
        appended row, leaving first) and summing +1 and -1 along each
        (slot, prompt) gives every appended row's count.
        """
        columns = self.segments.columns
        prompt = columns["prompt"][index]
        new_count_from = count_from.copy()
        if not len(index):
            return np.zeros(0, np.int64), new_count_from

        last = np.append(owner[1:] != owner[:-1], True)
        last_start = np.zeros(len(slots), np.int64)
        has_rows = np.zeros(len(slots), bool)
        last_start[owner[last]] = start[last]
        has_rows[owner[last]] = True
        first_counted = self._array_index(slots, count_from)
        leaving_length = np.where(has_rows, last_start - first_counted, 0)
        leaving = _segment_index(first_counted, leaving_length)
        leaving_owner = np.repeat(np.arange(len(slots)), leaving_length)
        window_keys = (owner << _INDEX_BITS) | start
        leaves_before = np.searchsorted(window_keys, (leaving_owner << _INDEX_BITS) | leaving, side="right")

        event_owner = np.concatenate((owner, leaving_owner))
        event_prompt = np.concatenate((prompt, columns["prompt"][leaving]))
        event_row = np.concatenate((np.arange(len(index)), leaves_before))
        event_enters = np.concatenate((np.ones(len(index), np.int8), np.zeros(len(leaving), np.int8)))
        known = event_prompt != UNKNOWN_PROMPT
        order = np.flatnonzero(known)[
            np.lexsort((event_enters[known], event_row[known], event_prompt[known], event_owner[known]))
        ]
        delta = np.where(event_enters[order] == 1, 1, -1).astype(np.int64)
        group_starts = run_starts(event_owner[order], event_prompt[order]) if len(order) else np.empty(0, np.int64)
        running = _running_sum(delta, group_starts, np.zeros(len(group_starts), np.int64))

        same_prompt = np.zeros(len(index), np.int64)
        entering = event_enters[order] == 1
        rows = event_row[order][entering]
        stored = self.prompt_counts.get(slots[event_owner[order][entering]], event_prompt[order][entering])
        same_prompt[rows] = stored + running[entering]

        if len(order):
            group_ends = np.append(group_starts[1:], len(order)) - 1
            changed = group_ends[running[group_ends] != 0]
            self.prompt_counts.add(slots[event_owner[order][changed]], event_prompt[order][changed], running[changed])
        new_count_from[has_rows] = (self.segments.first_number[slots] + (last_start - self.segments.start[slots]))[has_rows]
        return same_prompt, new_count_from


def _running_sum(values: np.ndarray, starts: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Return the running sum of ``values`` within each run, given the rows where runs start, each run starting from its entry in ``bases``."""
    totals = np.cumsum(values)
    if not len(values):
        return totals
    lengths = np.diff(np.append(starts, len(values)))
    before_run = totals[starts] - values[starts]
    return totals + np.repeat(bases - before_run, lengths)
