"""SubjectStates: per-subject values and rows taken and put back by chunk."""

import numpy as np
import pytest

from detector.state import SubjectStates


def _states() -> SubjectStates:
    return SubjectStates(values={"last_ms": ("int64", -1)}, rows={"ts": "float64"})


def _put(states: SubjectStates, keys, last_ms, owners, ts) -> None:
    states.put(keys, {"last_ms": np.asarray(last_ms)}, {"owner": np.asarray(owners), "ts": np.asarray(ts, dtype=np.float64)})


def test_take_unknown_subjects_gives_defaults():
    taken = _states().take([("key", "a"), ("ip", "a")])

    assert taken.known.tolist() == [False, False]
    assert taken.values["last_ms"].tolist() == [-1, -1]
    assert len(taken.rows["owner"]) == 0
    assert len(taken.rows["ts"]) == 0


def test_put_then_take_in_other_order():
    states = _states()
    _put(states, [("key", "a"), ("key", "b")], [10, 20], [0, 0, 1], [1.0, 2.0, 3.0])

    taken = states.take([("key", "b"), ("ip", "a"), ("key", "a")])

    assert taken.known.tolist() == [True, False, True]
    assert taken.values["last_ms"].tolist() == [20, -1, 10]
    assert taken.rows["owner"].tolist() == [0, 2, 2]
    assert taken.rows["ts"].tolist() == [3.0, 1.0, 2.0]


def test_key_and_address_subjects_are_apart():
    states = _states()
    _put(states, [("key", "10.0.0.1")], [1], [0], [1.0])

    assert states.take([("ip", "10.0.0.1")]).known.tolist() == [False]


def test_put_replaces_only_given_subjects():
    states = _states()
    _put(states, [("key", "a"), ("key", "b")], [10, 20], [0, 1], [1.0, 2.0])
    _put(states, [("key", "b")], [30], [0, 0], [4.0, 5.0])

    taken = states.take([("key", "a"), ("key", "b")])

    assert taken.values["last_ms"].tolist() == [10, 30]
    assert taken.rows["ts"].tolist() == [1.0, 4.0, 5.0]
    assert states.live_rows == 3


def test_compaction_keeps_live_rows():
    states = _states()
    keys = [("key", str(number)) for number in range(50)]
    rng = np.random.default_rng(0)
    expected: dict[tuple[str, str], list[float]] = {}
    for _ in range(200):
        chosen = sorted(rng.choice(len(keys), 5, replace=False))
        lengths = rng.integers(0, 30, size=5)
        owners = np.repeat(np.arange(5), lengths)
        ts = rng.random(len(owners))
        _put(states, [keys[i] for i in chosen], np.zeros(5, np.int64), owners, ts)
        for position, index in enumerate(chosen):
            expected[keys[index]] = ts[owners == position].tolist()

    taken = states.take(list(expected))

    for position, key in enumerate(expected):
        assert taken.rows["ts"][taken.rows["owner"] == position].tolist() == expected[key], key
    assert states.live_rows == sum(len(rows) for rows in expected.values())
    assert states._used < 3 * states.live_rows + 1024


def test_put_rejects_rows_out_of_owner_order():
    with pytest.raises(ValueError, match="sorted by owner"):
        _put(_states(), [("key", "a"), ("key", "b")], [1, 2], [1, 0], [1.0, 2.0])


def test_nbytes_counts_values_and_rows():
    states = _states()
    _put(states, [("key", "a"), ("key", "b")], [10, 20], [0, 0, 1], [1.0, 2.0, 3.0])

    assert states.nbytes() == 2 * (8 + 16) + 3 * 8
