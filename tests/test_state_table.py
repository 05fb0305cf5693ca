"""SubjectStates: per-subject values and rows taken and put back by chunk."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# Export and load: every value of every column type comes back bit for bit.
_VALUE_TYPES = {"last_ms": ("int64", -1), "ratio": ("float64", np.nan), "plan": ("uint64", 0), "flag": ("bool", False), "kind": ("int8", 0)}
_ROW_TYPES = {"ts": "float64", "net": "uint64", "count": "int64", "switched": "bool"}


def _typed_states() -> SubjectStates:
    return SubjectStates(values=_VALUE_TYPES, rows=_ROW_TYPES)


@st.composite
def _subject_tables(draw):
    """Draw (keys, values, rows) for 0 to 12 subjects with 0 to 6 rows each, as random bytes of each column type."""
    subjects = draw(st.integers(0, 12))
    keys = [("key", f"k{index}") for index in range(subjects)]
    lengths = draw(st.lists(st.integers(0, 6), min_size=subjects, max_size=subjects))
    total = sum(lengths)

    def column(dtype: str, size: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        raw = draw(st.binary(min_size=size * dtype.itemsize, max_size=size * dtype.itemsize))
        array = np.frombuffer(raw, np.uint8).copy()
        return array.astype(bool) if dtype == bool else array.view(dtype)

    values = {name: column(dtype, subjects) for name, (dtype, _) in _VALUE_TYPES.items()}
    rows = {"owner": np.repeat(np.arange(subjects), lengths)}
    rows.update((name, column(dtype, total)) for name, dtype in _ROW_TYPES.items())
    return keys, values, rows


def _assert_same_state(left, right) -> None:
    assert left.known.tolist() == right.known.tolist()
    for name in _VALUE_TYPES:
        assert left.values[name].tobytes() == right.values[name].tobytes(), name
    for name in ["owner", *_ROW_TYPES]:
        assert left.rows[name].tobytes() == right.rows[name].tobytes(), name


@settings(max_examples=60, deadline=None)
@given(_subject_tables(), st.integers(0, 3))
def test_export_load_round_trip(table, unknown):
    keys, values, rows = table
    states = _typed_states()
    states.put(keys, values, rows)
    everyone = keys + [("ip", f"unknown{index}") for index in range(unknown)]

    encoded = states.export(everyone)
    loaded = _typed_states()
    _put_typed(loaded, [("ip", "unknown0"), ("key", "k0")], lengths=[2, 3])
    invalid = loaded.load(everyone, encoded)

    assert invalid == []
    assert encoded[len(keys) :] == [None] * unknown
    _assert_same_state(loaded.take(everyone), states.take(everyone))


def _put_typed(states: SubjectStates, keys, lengths) -> None:
    rng = np.random.default_rng(1)
    values = {name: np.full(len(keys), 7).astype(dtype) for name, (dtype, _) in _VALUE_TYPES.items()}
    rows = {"owner": np.repeat(np.arange(len(keys)), lengths)}
    rows.update((name, rng.integers(0, 9, sum(lengths)).astype(dtype)) for name, dtype in _ROW_TYPES.items())
    states.put(keys, values, rows)


def test_load_reports_invalid_values(caplog):
    source = _typed_states()
    _put_typed(source, [("key", "a")], lengths=[2])
    good = source.export([("key", "a")])[0]
    foreign = SubjectStates(values={"last_ms": ("int64", -1)}, rows={})
    foreign.put([("key", "x")], {"last_ms": np.array([5])}, {"owner": np.empty(0, np.int64)})
    keys = [("key", name) for name in ["good", "garbage", "empty", "short", "long", "old", "other"]]
    encoded = [good, b"\xff" * 40, b"", good[:5], good + b"\0", bytes([0]) + good[1:], foreign.export([("key", "x")])[0]]

    loaded = _typed_states()
    _put_typed(loaded, keys, lengths=[1] * len(keys))
    with caplog.at_level("WARNING", logger="detector.state.table"):
        invalid = loaded.load(keys, encoded)

    assert invalid == [1, 2, 3, 4, 5, 6]
    taken = loaded.take(keys)
    assert taken.known.tolist() == [True] + [False] * 6
    assert taken.rows["owner"].tolist() == [0, 0]
    assert "invalid state of 6 subjects" in caplog.text
    assert "('key', 'empty'): 0 bytes, shorter than the 35-byte header" in caplog.text
    assert "('key', 'long'): 86 bytes, expected 85 for 2 rows" in caplog.text
    assert "('key', 'old'): format version 0, expected 1" in caplog.text


def test_load_rejects_other_columns():
    foreign = SubjectStates(values={"last_ms": ("int64", -1)}, rows={})
    foreign.put([("key", "x")], {"last_ms": np.array([5])}, {"owner": np.empty(0, np.int64)})
    loaded = SubjectStates(values={"last_ms": ("int32", -1)}, rows={})

    assert loaded.load([("key", "x")], foreign.export([("key", "x")])) == [0]
    assert loaded.take([("key", "x")]).known.tolist() == [False]


def test_discard_then_put_reuses_slot():
    states = _states()
    _put(states, [("key", "a"), ("key", "b")], [10, 20], [0, 1], [1.0, 2.0])
    states.discard([("key", "a"), ("key", "missing")])
    _put(states, [("key", "c")], [30], [0, 0], [3.0, 4.0])

    taken = states.take([("key", "a"), ("key", "b"), ("key", "c")])

    assert taken.known.tolist() == [False, True, True]
    assert taken.values["last_ms"].tolist() == [-1, 20, 30]
    assert taken.rows["ts"].tolist() == [2.0, 3.0, 4.0]
    assert len(states) == 2
    assert states.live_rows == 3
