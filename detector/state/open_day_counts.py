"""Request counts per (subject, kind, value) of each subject's open UTC day, in a numpy hash table updated in place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.state.day_counts import KINDS
from detector.state.pair_index import PairIndex
from detector.state.table import Columns, SubjectKey, _resized, numbered_slots

# The generation of a place no day has claimed yet. Subjects start at generation 0.
_UNCLAIMED = -1


@dataclass(slots=True)
class AddedCounts:
    """The counts of the added pairs after ``OpenDayCounts.add``, and which pairs were new to their subject's open day."""

    count: np.ndarray
    is_new: np.ndarray


class OpenDayCounts:
    """A request count per (subject slot, kind, value) of each subject's open day.

    A pair is keyed in a ``PairIndex`` as (slot × ``KINDS`` + kind, value)
    and stores its count and the generation of its subject's day. ``close``
    ends a subject's open day by raising the subject's generation, which
    leaves all its pairs dead at once without finding them. A dead pair that
    comes back counts from 0 again, and the next rebuild, at the table's
    maximum load, drops the dead pairs. Adding a batch costs time in
    proportion to its pairs, whatever the table holds, except for the
    rebuild. The table keeps one place per distinct value of every open
    day, so a day whose prompts never repeat costs memory, not time, per request.
    """

    def __init__(self) -> None:
        self._slots: dict[SubjectKey, int] = {}
        # Each slot's current generation, with room for slots not yet given out.
        self.generation = np.zeros(16, np.int32)
        self._index = PairIndex()
        self._count = np.zeros(self._index.capacity, np.int32)
        self._place_generation = np.full(self._index.capacity, _UNCLAIMED, np.int32)

    def __len__(self) -> int:
        """Return the number of live pairs: pairs of open days."""
        return int(np.count_nonzero(self._live()))

    def nbytes(self) -> int:
        """Return the bytes of the table and the generations, spare places included, without keys."""
        return self._index.nbytes() + self._count.nbytes + self._place_generation.nbytes + self.generation.nbytes

    def slots_for(self, keys: Sequence[SubjectKey]) -> np.ndarray:
        """Return each key's slot, adding a slot for each new subject."""
        slots = numbered_slots(self._slots, keys)
        if len(self._slots) * KINDS > np.iinfo(np.int32).max:
            raise ValueError(f"too many subjects for 32-bit pair keys: {len(self._slots):,} (at most {np.iinfo(np.int32).max // KINDS:,})")
        if len(self._slots) > len(self.generation):
            self.generation = _resized(self.generation, max(len(self._slots), 2 * len(self.generation)))
        return slots

    def add(self, slots: np.ndarray, kinds: np.ndarray, values: np.ndarray, counts: np.ndarray) -> AddedCounts:
        """Add ``counts`` to the (slot, kind, value) pairs of the slots' open days and return the pairs' new counts.

        Each pair may appear once per call. Slots must come from ``slots_for``.
        """
        slots = np.asarray(slots, np.int64)
        if self._index.is_full(len(slots)):
            self._rebuild(extra=len(slots))
        places = self._index.insert(slots * KINDS + kinds, values)
        generation = self.generation[slots]
        is_new = self._place_generation[places] != generation
        self._count[places] = np.where(is_new, 0, self._count[places]) + counts
        self._place_generation[places] = generation
        return AddedCounts(count=self._count[places].astype(np.int64), is_new=is_new)

    def close(self, slots: np.ndarray) -> None:
        """End the open day of each slot: its pairs no longer count and leave the table at the next rebuild."""
        self.generation[slots] += 1

    def pairs_of(self, key: SubjectKey) -> Columns:
        """Return the live pairs of ``key``'s open day as ``kind``, ``value`` and ``count``, sorted by kind then value.

        This reads the whole table, so it is for tests and inspection, not for a chunk's work.
        """
        slot = self._slots.get(key)
        chosen = self._live() & (self._index.slot // KINDS == slot) if slot is not None else np.zeros(0, bool)
        kind = (self._index.slot[chosen] % KINDS).astype(np.int64)
        value = self._index.value[chosen]
        order = np.lexsort((value, kind))
        return {"kind": kind[order], "value": value[order], "count": self._count[chosen][order].astype(np.int64)}

    def _live(self) -> np.ndarray:
        used = self._index.used()
        owner = np.where(used, self._index.slot // KINDS, 0)
        return used & (self._place_generation == self.generation[owner])

    def _rebuild(self, extra: int) -> None:
        """Reallocate the table for ``extra`` more pairs, dropping the pairs of closed days."""
        live = self._live()
        counts, generations = self._count[live], self._place_generation[live]
        places = self._index.rebuild(live, extra)
        self._count = np.zeros(self._index.capacity, np.int32)
        self._count[places] = counts
        self._place_generation = np.full(self._index.capacity, _UNCLAIMED, np.int32)
        self._place_generation[places] = generations
