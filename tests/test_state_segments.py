"""GrowingSegments, search_segments and PairCounts against plain Python references."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest

from detector.state.pair_counts import PairCounts
from detector.state.segments import GrowingSegments, search_segments


def _segment(segments: GrowingSegments, slot: int, name: str = "value") -> list[int]:
    start, length = int(segments.start[slot]), int(segments.length[slot])
    return segments.columns[name][start : start + length].tolist()


def test_segments_append_and_drop_match_lists():
    rng = np.random.default_rng(5)
    segments = GrowingSegments({"value": "int64"})
    keys = [("key", f"k{number}") for number in range(12)]
    expected: dict[int, list[int]] = {}
    dropped: dict[int, int] = {}
    counter = 0
    for _ in range(300):
        chosen = sorted(rng.choice(len(keys), size=int(rng.integers(1, 6)), replace=False).tolist())
        slots = segments.slots_for([keys[number] for number in chosen])
        extra = rng.integers(0, 40, size=len(chosen))
        owner = np.repeat(np.arange(len(chosen)), extra)
        values = counter + np.arange(len(owner))
        counter += len(owner)
        segments.append(slots, owner, {"value": values})
        for position, slot in enumerate(slots.tolist()):
            expected.setdefault(slot, []).extend(values[owner == position].tolist())
        drops = np.array([int(rng.integers(0, len(expected[slot]) + 1)) // 2 for slot in slots.tolist()])
        segments.drop_front(slots, drops)
        for slot, drop in zip(slots.tolist(), drops.tolist()):
            del expected[slot][:drop]
            dropped[slot] = dropped.get(slot, 0) + drop

    for slot, values in expected.items():
        assert _segment(segments, slot) == values
        assert segments.first_number[slot] == dropped[slot]
    assert segments.live_rows == sum(len(values) for values in expected.values())


def test_segments_compact_after_many_moves():
    segments = GrowingSegments({"value": "int64"})
    slots = segments.slots_for([("key", "a"), ("key", "b")])
    for step in range(2000):
        segments.append(slots, np.array([0, 1]), {"value": np.array([step, -step])})
        segments.drop_front(slots, np.array([1, 1]) if step >= 3 else np.array([0, 0]))

    assert _segment(segments, int(slots[0])) == [1997, 1998, 1999]
    assert _segment(segments, int(slots[1])) == [-1997, -1998, -1999]
    assert len(segments.columns["value"]) < 4096


def test_segments_drop_more_than_held_raises():
    segments = GrowingSegments({"value": "int64"})
    slots = segments.slots_for([("key", "a")])
    segments.append(slots, np.array([0]), {"value": np.array([1])})

    with pytest.raises(ValueError, match="invalid drop counts"):
        segments.drop_front(slots, np.array([2]))


def test_segments_clear_keeps_numbering():
    segments = GrowingSegments({"value": "int64"})
    slots = segments.slots_for([("key", "a")])
    segments.append(slots, np.array([0, 0, 0]), {"value": np.array([1, 2, 3])})
    segments.clear(slots)
    segments.append(slots, np.array([0]), {"value": np.array([9])})

    assert _segment(segments, int(slots[0])) == [9]
    assert segments.first_number[slots[0]] == 3


def test_segments_pickled_without_spare_room():
    segments = GrowingSegments({"value": "int64"})
    keys = [("key", f"k{number}") for number in range(50)]
    slots = segments.slots_for(keys)
    for step in range(40):
        segments.append(slots, np.arange(len(slots)), {"value": np.arange(len(slots)) * 1000 + step})
    segments.drop_front(slots, np.full(len(slots), 10))

    restored = pickle.loads(pickle.dumps(segments))

    assert len(restored.columns["value"]) == segments.live_rows == 50 * 30
    assert len(pickle.dumps(restored)) < len(pickle.dumps(segments.columns["value"]))
    for slot in slots.tolist():
        assert _segment(restored, slot) == _segment(segments, slot)
    assert restored.first_number[slots].tolist() == [10] * 50
    # A restored segment takes new rows, and a new subject gets a slot.
    more = restored.slots_for([keys[0], ("key", "new")])
    restored.append(more, np.array([0, 1]), {"value": np.array([-1, -2])})
    assert _segment(restored, int(more[0])) == _segment(segments, int(slots[0])) + [-1]
    assert _segment(restored, int(more[1])) == [-2]


def test_empty_segments_pickle():
    restored = pickle.loads(pickle.dumps(GrowingSegments({"value": "int64"})))
    slots = restored.slots_for([("key", "a")])
    restored.append(slots, np.array([0]), {"value": np.array([7])})

    assert _segment(restored, int(slots[0])) == [7]


def test_search_segments_equals_searchsorted():
    rng = np.random.default_rng(8)
    column = np.concatenate([np.sort(rng.integers(0, 50, size=size)) for size in (0, 1, 7, 30, 100)])
    bounds = np.cumsum([0, 0, 1, 7, 30, 100])
    low = np.repeat(bounds[:-1], 20)
    high = np.repeat(bounds[1:], 20)
    values = rng.integers(-5, 55, size=len(low))

    found = search_segments(column, low, high, values)

    expected = [lo + np.searchsorted(column[lo:hi], value, side="right") for lo, hi, value in zip(low, high, values)]
    assert found.tolist() == expected


def test_pair_counts_match_counter():
    rng = np.random.default_rng(13)
    counts = PairCounts()
    expected: Counter = Counter()
    for _ in range(60):
        slots = rng.integers(0, 40, size=500)
        values = rng.integers(0, 2**64, size=500, dtype=np.uint64) % np.uint64(3000)
        deltas = rng.integers(1, 4, size=500)
        counts.add(slots, values, deltas)
        for pair in zip(slots.tolist(), values.tolist(), deltas.tolist()):
            expected[pair[:2]] += pair[2]
        present = list(expected)
        removed = [present[index] for index in rng.choice(len(present), size=200, replace=False)]
        counts.add(
            np.array([slot for slot, _ in removed]),
            np.array([value for _, value in removed], np.uint64),
            -np.array([expected[pair] for pair in removed]),
        )
        for pair in removed:
            del expected[pair]

    probe_slots = rng.integers(0, 41, size=3000)
    probe_values = rng.integers(0, 3100, size=3000).astype(np.uint64)
    found = counts.get(probe_slots, probe_values)
    assert found.tolist() == [expected.get(pair, 0) for pair in zip(probe_slots.tolist(), probe_values.tolist())]
    assert len(counts) == len(expected)


def test_pair_counts_keep_large_values_apart():
    counts = PairCounts()
    values = np.array([0, 2**63, 2**64 - 1, 2**64 - 1], np.uint64)
    counts.add(np.array([1, 1, 1, 2]), values, np.array([1, 2, 3, 4]))

    assert counts.get(np.array([1, 1, 1, 2, 2]), np.append(values, np.uint64(0))).tolist() == [1, 2, 3, 4, 0]


def test_pair_counts_below_zero_raises():
    counts = PairCounts()

    with pytest.raises(ValueError, match="fell below 0"):
        counts.add(np.array([1]), np.array([5], np.uint64), np.array([-1]))
