"""Counts per (slot, 64-bit value) pair in a numpy hash table, read and updated a batch at a time."""

from __future__ import annotations

import numpy as np

from detector.state.pair_index import PairIndex


class PairCounts:
    """A count per (slot, value) pair, kept at the pair's place in a ``PairIndex``.

    A pair whose count falls to 0 keeps its place until the next rebuild,
    which keeps only pairs with a positive count.
    """

    def __init__(self) -> None:
        self._index = PairIndex()
        # 32-bit counts: they count rows in one window.
        self._count = np.zeros(self._index.capacity, np.int32)

    def __len__(self) -> int:
        """Return the number of pairs with a positive count."""
        return int(np.count_nonzero(self._count > 0))

    def nbytes(self) -> int:
        """Return the bytes of the table's arrays, spare places included."""
        return self._index.nbytes() + self._count.nbytes

    def get(self, slots: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Return the count of each (slot, value) pair, 0 for pairs never added."""
        places = self._index.find(slots, values)
        return np.where(places >= 0, self._count[np.maximum(places, 0)], 0).astype(np.int64)

    def add(self, slots: np.ndarray, values: np.ndarray, deltas: np.ndarray) -> None:
        """Add ``deltas`` to the counts of the (slot, value) pairs. A pair may appear more than once.

        Raises ValueError when a count would fall below 0, which means the
        caller removed a pair it never added.
        """
        if self._index.is_full(len(slots)):
            self._rebuild(extra=len(slots))
        places = self._index.insert(slots, values)
        np.add.at(self._count, places, np.asarray(deltas, np.int64))
        if bool(np.any(self._count[places] < 0)):
            raise ValueError("a pair count fell below 0: a pair was removed more often than added")

    def _rebuild(self, extra: int) -> None:
        """Reallocate the table for ``extra`` more pairs, dropping pairs whose count is 0."""
        live = self._count > 0
        counts = self._count[live]
        places = self._index.rebuild(live, extra)
        self._count = np.zeros(self._index.capacity, np.int32)
        self._count[places] = counts
