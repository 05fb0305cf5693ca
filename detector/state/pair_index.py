"""Places of (slot, 64-bit value) pairs in a numpy hash table with linear probing, found and inserted a batch at a time."""

from __future__ import annotations

import numpy as np

_EMPTY = -1
# Rebuild once pairs fill this share of the places, counting pairs the owner no longer needs.
_MAX_LOAD = 0.7
_MIN_CAPACITY = 1024
# Pairs still probing when a batch step stops paying for its numpy calls; the rest probe one by one.
_FEW = 32


class PairIndex:
    """The place of each (slot, value) pair among ``capacity`` places, with linear probing over numpy arrays.

    The owner keeps its per-pair columns in arrays of ``capacity`` entries,
    indexed by place. ``find`` and ``insert`` take whole batches and loop
    once per probe step, not once per pair, until few pairs are left, which
    then probe one by one. Pairs are never removed one at a time, so lookups
    need no tombstones. Instead the owner calls ``rebuild`` with the places
    to keep and moves its columns to the places it returns.
    """

    def __init__(self, capacity: int = _MIN_CAPACITY) -> None:
        # 32-bit slots keep a place at 12 bytes. Owners number subjects (times a few kinds) with them.
        self.slot = np.full(capacity, _EMPTY, np.int32)
        self.value = np.zeros(capacity, np.uint64)
        self.occupied = 0

    @property
    def capacity(self) -> int:
        """Places in the table, used or not."""
        return len(self.slot)

    def nbytes(self) -> int:
        """Return the bytes of the key arrays, spare places included."""
        return self.slot.nbytes + self.value.nbytes

    def used(self) -> np.ndarray:
        """Return a mask of the places that hold a pair."""
        return self.slot != _EMPTY

    def is_full(self, extra: int) -> bool:
        """Return whether ``extra`` more pairs could push the table past its maximum load, so the owner must rebuild first."""
        return self.occupied + extra > _MAX_LOAD * self.capacity

    def find(self, slots: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Return each pair's place, -1 for a pair not in the table."""
        return self._probe(np.asarray(slots, np.int64), np.asarray(values, np.uint64), insert=False)

    def insert(self, slots: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Return each pair's place, taking an empty place for a pair not yet in the table. A pair may appear more than once.

        The caller must make room first (``is_full`` and ``rebuild``): a full table makes this loop forever.
        """
        return self._probe(np.asarray(slots, np.int64), np.asarray(values, np.uint64), insert=True)

    def rebuild(self, keep: np.ndarray, extra: int) -> np.ndarray:
        """Reallocate for twice the kept pairs plus ``extra``, reinsert the pairs at ``keep`` (a mask of places) and return their new places.

        The returned places follow the kept places in ascending order, as
        ``column[keep]`` lists them, so an owner moves a column with
        ``new_column[places] = column[keep]``.

        NOTE: a rebuild reinserts every kept pair in one call, so the chunk
        that triggers it pauses: ``OpenDayCounts`` took 3.0 s to rebuild
        with 9 million live pairs, on the shared 2-core machine at load
        average 2.9. With pairs that never repeat this happens once per
        0.2 × capacity new pairs, so the pauses grow with the pairs kept.
        """
        slots, values = self.slot[keep].astype(np.int64), self.value[keep]
        capacity = max(_MIN_CAPACITY, 2 * (len(slots) + extra))
        self.slot = np.full(capacity, _EMPTY, np.int32)
        self.value = np.zeros(capacity, np.uint64)
        places = self._placed_in_empty(slots, values)
        self.slot[places] = slots
        self.value[places] = values
        self.occupied = len(places)
        return places

    def _placed_in_empty(self, slots: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Return the places that linear probing gives distinct pairs inserted into this table while it is empty.

        Sorted by home place, pair k lands at k + max(home_j - j) over the
        pairs j <= k, the end of the run of places its predecessors fill.
        Pairs pushed past the last place wrap around to the first free
        places, in order. One sort replaces the probe loop, which does one
        ``np.unique`` per step. Measured alone on the shared 2-core machine,
        3 million pairs took 1.5 s this way and 3.1 s with ``insert``.
        """
        capacity = len(self.slot)
        home = (_hash(slots, values) % np.uint64(capacity)).astype(np.int64)
        order = np.argsort(home)
        rank = np.arange(len(order))
        in_order = rank + np.maximum.accumulate(home[order] - rank)
        wrapped = in_order >= capacity
        if wrapped.any():
            free = np.ones(capacity, bool)
            free[in_order[~wrapped]] = False
            in_order[wrapped] = np.flatnonzero(free)[: int(wrapped.sum())]
        places = np.empty(len(order), np.int64)
        places[order] = in_order
        return places

    def _probe(self, slots: np.ndarray, values: np.ndarray, *, insert: bool) -> np.ndarray:
        """Return each pair's place in the table, -1 for a missing pair unless ``insert`` adds it."""
        capacity = len(self.slot)
        position = (_hash(slots, values) % np.uint64(capacity)).astype(np.int64)
        places = np.full(len(slots), -1, np.int64)
        pending = np.arange(len(slots))
        while len(pending) > _FEW:
            at = position[pending]
            stored = self.slot[at]
            match = (stored == slots[pending]) & (self.value[at] == values[pending])
            places[pending[match]] = at[match]
            empty = stored == _EMPTY
            done = match | empty
            if insert and empty.any():
                done = match.copy()
                claimed, first = np.unique(at[empty], return_index=True)
                # One pair per empty place wins it; the others probe on from there in the next step.
                winners = pending[np.flatnonzero(empty)[first]]
                self.slot[claimed] = slots[winners]
                self.value[claimed] = values[winners]
                self.occupied += len(claimed)
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
        capacity = len(self.slot)
        while True:
            stored = self.slot[at]
            if stored == slot and self.value[at] == value:
                return at
            if stored == _EMPTY:
                if not insert:
                    return -1
                self.slot[at] = slot
                self.value[at] = value
                self.occupied += 1
                return at
            at = at + 1 if at + 1 < capacity else 0


def _hash(slots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mix a slot and a value into 64 bits (the finaliser of SplitMix64)."""
    mixed = values ^ (slots.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return mixed ^ (mixed >> np.uint64(31))
