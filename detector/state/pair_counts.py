"""Counts per (slot, 64-bit value) pair in a numpy hash table, read and updated a batch at a time."""

from __future__ import annotations

import numpy as np

_EMPTY = -1
# Rebuild once pairs fill this share of the table, counting pairs whose count fell to 0.
_MAX_LOAD = 0.7
_MIN_CAPACITY = 1024
# Pairs still probing when a batch step stops paying for its numpy calls; the rest probe one by one.
_FEW = 32


class PairCounts:
    """A count per (slot, value) pair, with linear probing over numpy arrays.

    ``get`` and ``add`` take whole batches and loop once per probe step, not
    once per pair, until few pairs are left, which then probe one by one. A pair whose count falls to 0 keeps its place until the
    next rebuild, which keeps only pairs with a positive count, so lookups
    never need tombstones.
    """

    def __init__(self) -> None:
        self._allocate(_MIN_CAPACITY)

    def __len__(self) -> int:
        """Return the number of pairs with a positive count."""
        return int(np.count_nonzero(self._count > 0))

    def nbytes(self) -> int:
        """Return the bytes of the table's arrays, spare places included."""
        return self._slot.nbytes + self._value.nbytes + self._count.nbytes

    def get(self, slots: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Return the count of each (slot, value) pair, 0 for pairs never added."""
        places = self._probe(np.asarray(slots, np.int64), np.asarray(values, np.uint64), insert=False)
        return np.where(places >= 0, self._count[np.maximum(places, 0)], 0).astype(np.int64)

    def add(self, slots: np.ndarray, values: np.ndarray, deltas: np.ndarray) -> None:
        """Add ``deltas`` to the counts of the (slot, value) pairs. A pair may appear more than once.

        Raises ValueError when a count would fall below 0, which means the
        caller removed a pair it never added.
        """
        slots = np.asarray(slots, np.int64)
        values = np.asarray(values, np.uint64)
        if self._occupied + len(slots) > _MAX_LOAD * len(self._slot):
            self._rebuild(extra=len(slots))
        places = self._probe(slots, values, insert=True)
        np.add.at(self._count, places, np.asarray(deltas, np.int64))
        if bool(np.any(self._count[places] < 0)):
            raise ValueError("a pair count fell below 0: a pair was removed more often than added")

    def _allocate(self, capacity: int) -> None:
        # 32-bit slots and counts keep a place at 16 bytes: slots number subjects, counts rows in one window.
        self._slot = np.full(capacity, _EMPTY, np.int32)
        self._value = np.zeros(capacity, np.uint64)
        self._count = np.zeros(capacity, np.int32)
        self._occupied = 0

    def _rebuild(self, extra: int) -> None:
        """Reallocate for twice the live pairs plus ``extra``, dropping pairs whose count is 0.

        NOTE: a rebuild reinserts every live pair in one call, so the chunk
        that triggers it pauses: 1.1 s for 735,000 pairs on a shared 2-core
        machine at load average 13. With a fresh prompt per request this
        happens once per 0.2 × capacity new pairs.
        """
        live = self._count > 0
        slots, values, counts = self._slot[live], self._value[live], self._count[live]
        capacity = max(_MIN_CAPACITY, 2 * (len(slots) + extra))
        self._allocate(capacity)
        places = self._probe(slots, values, insert=True)
        self._count[places] = counts

    def _probe(self, slots: np.ndarray, values: np.ndarray, *, insert: bool) -> np.ndarray:
        """Return each pair's place in the table, -1 for a missing pair unless ``insert`` adds it."""
        capacity = len(self._slot)
        position = (_hash(slots, values) % np.uint64(capacity)).astype(np.int64)
        places = np.full(len(slots), -1, np.int64)
        pending = np.arange(len(slots))
        while len(pending) > _FEW:
            at = position[pending]
            stored = self._slot[at]
            match = (stored == slots[pending]) & (self._value[at] == values[pending])
            places[pending[match]] = at[match]
            empty = stored == _EMPTY
            done = match | empty
            if insert and empty.any():
                done = match.copy()
                claimed, first = np.unique(at[empty], return_index=True)
                # One pair per empty place wins it; the others probe on from there in the next step.
                winners = pending[np.flatnonzero(empty)[first]]
                self._slot[claimed] = slots[winners]
                self._value[claimed] = values[winners]
                self._occupied += len(claimed)
                places[winners] = claimed
                done[np.flatnonzero(empty)[first]] = True
            moving = ~match & ~empty
            following = at[moving] + 1
            position[pending[moving]] = np.where(following == capacity, 0, following)
            pending = pending[~done]
        for pair in pending.tolist():
            places[pair] = self._probe_one(int(slots[pair]), values[pair], int(position[pair]), insert=insert)
        return places

    def _probe_one(self, slot: int, value: np.uint64, at: int, *, insert: bool) -> int:
        """Return one pair's place, probing from ``at``, as ``_probe`` does for a batch."""
        capacity = len(self._slot)
        while True:
            stored = self._slot[at]
            if stored == slot and self._value[at] == value:
                return at
            if stored == _EMPTY:
                if not insert:
                    return -1
                self._slot[at] = slot
                self._value[at] = value
                self._occupied += 1
                return at
            at = at + 1 if at + 1 < capacity else 0


def _hash(slots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mix a slot and a value into 64 bits (the finaliser of SplitMix64)."""
    mixed = values ^ (slots.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return mixed ^ (mixed >> np.uint64(31))
