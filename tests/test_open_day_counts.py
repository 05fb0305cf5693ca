"""OpenDayCounts and PairIndex against a plain dict of counts per (slot, kind, value) of each open day."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.state.day_counts import KINDS
from detector.state.open_day_counts import OpenDayCounts
from detector.state.pair_index import PairIndex, _hash

KEYS = [("key", f"k{number}") for number in range(40)]


class DictModel:
    """The counts of each open day as a dict, closed days dropped at once."""

    def __init__(self) -> None:
        self.counts: dict[tuple[int, int, int], int] = {}

    def add(self, slots, kinds, values, counts) -> tuple[list[int], list[bool]]:
        new_counts, is_new = [], []
        for pair in zip(slots, kinds, values, counts):
            key = pair[:3]
            is_new.append(key not in self.counts)
            self.counts[key] = self.counts.get(key, 0) + pair[3]
            new_counts.append(self.counts[key])
        return new_counts, is_new

    def close(self, slots) -> None:
        closed = set(slots)
        self.counts = {key: count for key, count in self.counts.items() if key[0] not in closed}

    def pairs_of(self, slot: int) -> list[tuple[int, int, int]]:
        return sorted((kind, value, count) for (owner, kind, value), count in self.counts.items() if owner == slot)


def _pairs(counts: OpenDayCounts, key) -> list[tuple[int, int, int]]:
    pairs = counts.pairs_of(key)
    return list(zip(pairs["kind"].tolist(), pairs["value"].tolist(), pairs["count"].tolist()))


def _add(counts: OpenDayCounts, model: DictModel, slots, kinds, values, added) -> None:
    result = counts.add(np.asarray(slots, np.int64), np.asarray(kinds, np.int64), np.asarray(values, np.uint64), np.asarray(added, np.int64))
    expected_counts, expected_new = model.add(slots, kinds, values, added)

    assert result.count.tolist() == expected_counts
    assert result.is_new.tolist() == expected_new


def test_pair_index_places_colliding_pairs_apart():
    index = PairIndex()
    values = np.arange(200_000, dtype=np.uint64)
    homes = _hash(np.full(len(values), 3, np.int64), values) % np.uint64(index.capacity)
    # Twelve values whose pairs with slot 3 share one home place, so each probes past the others.
    colliding = values[homes == homes[0]][:12]
    assert len(colliding) == 12

    places = index.insert(np.full(12, 3), colliding)

    assert len(set(places.tolist())) == 12
    assert index.find(np.full(12, 3), colliding).tolist() == places.tolist()
    assert index.find(np.full(12, 4), colliding).tolist() == [-1] * 12
    assert index.insert(np.full(12, 3), colliding).tolist() == places.tolist()
    assert index.occupied == 12


def test_pair_index_rebuild_keeps_chosen_pairs():
    index = PairIndex()
    slots = np.arange(600) % 7
    values = np.arange(600, dtype=np.uint64) * np.uint64(2**40)
    places = index.insert(slots, values)
    keep = np.zeros(index.capacity, bool)
    keep[places[::3]] = True

    moved = index.rebuild(keep, extra=100)

    assert index.occupied == 200
    assert index.capacity == 1024
    found = index.find(slots, values)
    assert sorted(moved.tolist()) == sorted(found[::3].tolist())
    assert (found[1::3] == -1).all()
    assert (found[2::3] == -1).all()


def test_counts_grow_past_first_capacity():
    counts, model = OpenDayCounts(), DictModel()
    slots = counts.slots_for(KEYS[:4])
    first = counts.nbytes()

    for step in range(10):
        values = np.arange(step * 500, (step + 1) * 500)
        _add(counts, model, slots[values % 4].tolist(), (values % KINDS).tolist(), values.tolist(), [1] * 500)

    assert len(counts) == 5000
    assert counts.nbytes() > 4 * first
    for slot, key in zip(slots.tolist(), KEYS[:4]):
        assert _pairs(counts, key) == model.pairs_of(slot)


def test_closed_day_pairs_leave_at_rebuild():
    counts, model = OpenDayCounts(), DictModel()
    slots = counts.slots_for(KEYS[:2])
    values = list(range(600))
    _add(counts, model, [int(slots[0])] * 600, [4] * 600, values, [2] * 600)
    _add(counts, model, [int(slots[1])] * 5, [4] * 5, values[:5], [1] * 5)
    full = counts.nbytes()

    counts.close(slots[:1])
    model.close([int(slots[0])])

    assert len(counts) == 5
    assert _pairs(counts, KEYS[0]) == []
    # The first subject's next day counts the same values from 0, as new pairs.
    _add(counts, model, [int(slots[0])] * 3, [4] * 3, values[:3], [1] * 3)
    # Enough new pairs to pass the maximum load: the rebuild drops the 597 dead pairs instead of growing.
    _add(counts, model, [int(slots[1])] * 200, [3] * 200, values[:200], [1] * 200)
    assert counts.nbytes() == full
    assert len(counts) == 208
    assert _pairs(counts, KEYS[0]) == model.pairs_of(int(slots[0]))
    assert _pairs(counts, KEYS[1]) == model.pairs_of(int(slots[1]))


def test_close_leaves_other_subjects_open():
    counts, model = OpenDayCounts(), DictModel()
    slots = counts.slots_for(KEYS[:3]).tolist()
    _add(counts, model, slots, [0, 0, 0], [7, 7, 7], [1, 2, 3])

    counts.close(np.array(slots[1:2]))
    model.close(slots[1:2])
    _add(counts, model, slots, [0, 0, 0], [7, 7, 7], [1, 1, 1])

    assert [_pairs(counts, key) for key in KEYS[:3]] == [[(0, 7, 2)], [(0, 7, 1)], [(0, 7, 4)]]


def test_counts_match_dict_under_random_days():
    rng = np.random.default_rng(21)
    counts, model = OpenDayCounts(), DictModel()
    slots = counts.slots_for(KEYS)
    for _ in range(80):
        pairs = np.unique(np.column_stack([rng.integers(0, 40, 400), rng.integers(0, KINDS, 400), rng.integers(0, 500, 400)]), axis=0)
        added = rng.integers(1, 5, len(pairs))
        _add(counts, model, slots[pairs[:, 0]].tolist(), pairs[:, 1].tolist(), pairs[:, 2].tolist(), added.tolist())
        closing = rng.choice(40, size=int(rng.integers(0, 6)), replace=False)
        counts.close(slots[closing])
        model.close(slots[closing].tolist())

    assert len(counts) == len(model.counts)
    for slot, key in zip(slots.tolist(), KEYS):
        assert _pairs(counts, key) == model.pairs_of(slot)


_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.dictionaries(st.tuples(st.integers(0, 4), st.integers(0, KINDS - 1), st.integers(0, 6)), st.integers(1, 3), max_size=25)),
        st.tuples(st.just("close"), st.sets(st.integers(0, 4), max_size=3)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(steps=_STEPS)
def test_counts_match_dict_model(steps):
    counts, model = OpenDayCounts(), DictModel()
    slots = counts.slots_for(KEYS[:5])
    for action, argument in steps:
        if action == "add":
            pairs = list(argument)
            _add(
                counts, model,
                [int(slots[slot]) for slot, _, _ in pairs], [kind for _, kind, _ in pairs],
                [value for _, _, value in pairs], list(argument.values()),
            )
        else:
            closing = sorted(argument)
            counts.close(slots[closing])
            model.close([int(slots[slot]) for slot in closing])

    for slot, key in zip(slots.tolist(), KEYS[:5]):
        assert _pairs(counts, key) == model.pairs_of(slot)


def test_pair_index_rebuild_wraps_past_last_place():
    index = PairIndex()
    pool = np.arange(200_000, dtype=np.uint64)
    homes = _hash(np.zeros(len(pool), np.int64), pool) % np.uint64(index.capacity)
    # Thirty pairs whose home is one of the last four places: at least 26 must wrap to the first places.
    values = pool[homes >= np.uint64(index.capacity - 4)][:30]
    slots = np.zeros(30, np.int64)
    index.insert(slots, values)

    moved = index.rebuild(index.used(), extra=0)

    found = index.find(slots, values)
    assert index.capacity == 1024
    assert sorted(found.tolist()) == sorted(moved.tolist())
    assert len(set(found.tolist())) == 30
    assert int((found < 26).sum()) == 26
