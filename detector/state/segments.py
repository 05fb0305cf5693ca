"""Per-subject rows that grow at the end and shrink at the front in place, for states whose cost follows new rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detector.state.table import (
    Columns,
    SubjectKey,
    _resized,
    _segment_index,
    numbered_slots,
)

# Free rows given to a relocated segment, as a multiple of the rows it then holds.
_GROWTH = 2
_MIN_CAPACITY = 16


class GrowingSegments:
    """Rows of many subjects in shared column arrays, each subject's rows one contiguous segment with spare room after it.

    Unlike ``SubjectStates.put``, which writes a subject's whole segment
    again, ``append`` writes only the new rows and ``drop_front`` only moves
    the segment's start, so a chunk costs time in proportion to its new rows.
    A segment without room for its new rows moves to the end of the arrays
    with twice the room it needs, so each row is copied O(1) times on
    average. Space left behind is reclaimed by compaction once it exceeds the
    room reserved by live segments.

    Each row has a number that stays fixed while the row is kept: the
    segment's ``first_number`` plus the row's offset in the segment.
    """

    def __init__(self, columns: dict[str, str]) -> None:
        """``columns`` maps each row column to its dtype."""
        self._slots: dict[SubjectKey, int] = {}
        self.start = np.empty(0, np.int64)
        self.length = np.empty(0, np.int64)
        self.capacity = np.empty(0, np.int64)
        self.first_number = np.empty(0, np.int64)
        self.columns: Columns = {name: np.empty(0, dtype) for name, dtype in columns.items()}
        self._used = 0
        self._reserved = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __getstate__(self) -> dict:
        """Return the state with each segment packed to its rows, so a checkpoint contains no spare room.

        At 10,000 requests a second the arrays had room for three times the
        rows kept. A restored segment is moved, with new room, at its first
        append.
        """
        state = dict(vars(self))
        subjects = len(self._slots)
        lengths = self.length[:subjects].copy()
        rows = _segment_index(self.start[:subjects], lengths)
        state["columns"] = {name: column[rows] for name, column in self.columns.items()}
        state["start"] = np.cumsum(lengths) - lengths
        state["length"] = lengths
        state["capacity"] = lengths.copy()
        state["first_number"] = self.first_number[:subjects].copy()
        state["_used"] = state["_reserved"] = int(lengths.sum())
        return state

    @property
    def live_rows(self) -> int:
        """Rows kept for all subjects."""
        return int(self.length[: len(self._slots)].sum())

    def nbytes(self) -> int:
        """Return the bytes of live rows and per-subject bookkeeping, without keys or spare room."""
        row_bytes = sum(column.dtype.itemsize for column in self.columns.values())
        return len(self._slots) * 32 + self.live_rows * row_bytes

    def slots_for(self, keys: Sequence[SubjectKey]) -> np.ndarray:
        """Return each key's slot, adding an empty segment for each new subject."""
        slots = numbered_slots(self._slots, keys)
        if len(self._slots) > len(self.start):
            capacity = max(len(self._slots), 2 * len(self.start), 16)
            self.start = _resized(self.start, capacity)
            self.length = _resized(self.length, capacity)
            self.capacity = _resized(self.capacity, capacity)
            self.first_number = _resized(self.first_number, capacity)
        return slots

    def end(self, slots: np.ndarray) -> np.ndarray:
        """Return the array index after each slot's last row."""
        return self.start[slots] + self.length[slots]

    def append(self, slots: np.ndarray, owner: np.ndarray, rows: Columns) -> np.ndarray:
        """Append ``rows`` to the segments of ``slots`` and return the array index of each appended row.

        ``owner`` is each row's position in ``slots`` and must be sorted. The
        columns not in ``rows`` are left as they were for the caller to fill.
        Indices stay valid until the next ``append``.
        """
        extra = np.bincount(owner, minlength=len(slots)).astype(np.int64)
        self._make_room(slots, extra)
        first_of_owner = np.concatenate(([0], np.cumsum(extra)[:-1]))
        index = self.end(slots)[owner] + np.arange(len(owner)) - first_of_owner[owner]
        for name, values in rows.items():
            self.columns[name][index] = values
        self.length[slots] += extra
        return index

    def drop_front(self, slots: np.ndarray, counts: np.ndarray) -> None:
        """Drop the first ``counts`` rows of each slot's segment. Later rows keep their numbers."""
        counts = np.asarray(counts, np.int64)
        if bool(np.any(counts > self.length[slots])):
            raise ValueError(f"invalid drop counts: more rows than the segment contains ({counts.tolist()} > {self.length[slots].tolist()})")
        self.start[slots] += counts
        self.length[slots] -= counts
        self.capacity[slots] -= counts
        self.first_number[slots] += counts
        self._reserved -= int(counts.sum())

    def clear(self, slots: np.ndarray) -> None:
        """Drop every row of each slot's segment, keeping its room for new rows."""
        self.drop_front(slots, self.length[slots])

    def _make_room(self, slots: np.ndarray, extra: np.ndarray) -> None:
        """Move each segment without room for ``extra`` more rows to the end of the arrays, with spare room."""
        moving = np.flatnonzero(self.length[slots] + extra > self.capacity[slots])
        if not len(moving):
            return
        moved = slots[moving]
        lengths = self.length[moved]
        capacity = np.maximum(_GROWTH * (lengths + extra[moving]), _MIN_CAPACITY)
        self._reserve(int(capacity.sum()))

        source = _segment_index(self.start[moved], lengths)
        new_start = self._used + np.concatenate(([0], np.cumsum(capacity)[:-1]))
        target = _segment_index(new_start, lengths)
        for column in self.columns.values():
            column[target] = column[source]
        self._reserved += int(capacity.sum() - self.capacity[moved].sum())
        self.start[moved] = new_start
        self.capacity[moved] = capacity
        self._used += int(capacity.sum())

    def _reserve(self, rows: int) -> None:
        """Make room for ``rows`` more rows after the used ones, compacting first when free space behind exceeds the reserved."""
        if self._used - self._reserved > max(self._reserved, 1024):
            self._compact()
        needed = self._used + rows
        size = len(next(iter(self.columns.values())))
        if needed > size:
            size = max(needed, 2 * size, 1024)
            for name, column in self.columns.items():
                self.columns[name] = _resized(column, size)

    def _compact(self) -> None:
        """Move every segment with its room to the front of the arrays, in slot order."""
        subjects = len(self._slots)
        lengths = self.length[:subjects]
        capacity = self.capacity[:subjects]
        source = _segment_index(self.start[:subjects], lengths)
        new_start = np.concatenate(([0], np.cumsum(capacity)[:-1]))
        target = _segment_index(new_start, lengths)
        for column in self.columns.values():
            # Targets never lie after their sources, because segments keep their order; a gather copies first anyway.
            column[target] = column[source]
        self.start[:subjects] = new_start
        self._used = int(capacity.sum())


def search_segments(column: np.ndarray, low: np.ndarray, high: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Return, for each query, the first index in ``[low, high)`` whose value in ``column`` exceeds ``values``, else ``high``.

    Each range of ``column`` must be sorted. This is ``searchsorted(side="right")``
    for many ranges at once: one bisection step over all queries per loop,
    so the cost is O(queries × log(range length)).
    """
    low = np.asarray(low, np.int64).copy()
    high = np.asarray(high, np.int64).copy()
    active = np.flatnonzero(low < high)
    while len(active):
        below, above = low[active], high[active]
        middle = (below + above) // 2
        right = column[middle] <= values[active]
        below = np.where(right, middle + 1, below)
        above = np.where(right, above, middle)
        low[active] = below
        high[active] = above
        active = active[below < above]
    return low
