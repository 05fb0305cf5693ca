"""StateStore: per-subject detector state in the real Redis, shared by store instances as by workers."""

import itertools

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.detectors import AnomalyDetector, AutomationDetector, KeySharingDetector
from detector.model_registry import load_model
from detector.state import (
    AnomalyDayState,
    AutomationLoadState,
    KeySharingState,
    SubjectStates,
)
from workers.state_store import DAY, StateStore, StoredDetector, state_tables

KEYS = [("key", f"k{index}") for index in range(6)] + [("ip", "10.0.0.1")]


def _tables() -> dict[str, SubjectStates]:
    return {
        "recent": SubjectStates(values={"last_ms": ("int64", -1), "plan": ("uint64", 0)}, rows={"ts": "float64"}),
        "hours": SubjectStates(values={}, rows={"hour": "int64", "requests": "int64"}),
        "days": SubjectStates(values={"day": ("int64", -1)}, rows={}),
    }


def _store(client, prefix, tables, group_size=500) -> StateStore:
    detectors = [
        StoredDetector("load", 1200, {"recent": tables["recent"]}),
        StoredDetector("pattern", 7 * DAY, {"hours": tables["hours"], "days": tables["days"]}),
    ]
    return StateStore(client, detectors, prefix=prefix, group_size=group_size)


def _fill(tables, keys, seed: int) -> None:
    """Give every subject of ``keys`` state in each table, different for each seed."""
    rng = np.random.default_rng(seed)
    count = len(keys)
    lengths = rng.integers(0, 4, count)
    owner = np.repeat(np.arange(count), lengths)
    tables["recent"].put(
        keys,
        {"last_ms": rng.integers(0, 10**12, count), "plan": rng.integers(0, 2**63, count).astype(np.uint64)},
        {"owner": owner, "ts": rng.random(len(owner))},
    )
    tables["hours"].put(keys, {}, {"owner": owner, "hour": rng.integers(0, 10**6, len(owner)), "requests": rng.integers(0, 99, len(owner))})
    tables["days"].put(keys, {"day": rng.integers(0, 10**5, count)}, {"owner": np.empty(0, np.int64)})


def _snapshot(tables, keys) -> dict:
    """Return each table's state of ``keys`` as lists and bytes, for comparing whole states."""
    snapshot = {}
    for name, table in tables.items():
        taken = table.take(keys)
        snapshot[name] = (
            taken.known.tolist(),
            {column: values.tobytes() for column, values in taken.values.items()},
            {column: rows.tobytes() for column, rows in taken.rows.items()},
        )
    return snapshot


def _subject_snapshot(tables, key) -> dict:
    return _snapshot(tables, [key])


def test_round_trip_through_redis(redis_client, redis_prefix):
    written = _tables()
    writer = _store(redis_client, redis_prefix, written)
    writer.load(KEYS)
    _fill(written, KEYS[:4], seed=1)

    assert writer.save(KEYS) == []

    read = _tables()
    assert _store(redis_client, redis_prefix, read).load(KEYS) == KEYS
    assert read["recent"].take(KEYS).known.tolist() == [True] * 4 + [False] * 3
    assert _snapshot(read, KEYS) == _snapshot(written, KEYS)


_examples = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 7), st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_round_trip_random_tables(redis_client, redis_prefix, subjects, seed, group_size):
    prefix = f"{redis_prefix}:{next(_examples)}"
    keys = KEYS[:subjects]
    written = _tables()
    writer = _store(redis_client, prefix, written, group_size=group_size)
    writer.load(KEYS)
    _fill(written, keys, seed=seed)

    assert writer.save(KEYS) == []

    read = _tables()
    _fill(read, KEYS[::-1], seed=seed + 1)
    _store(redis_client, prefix, read, group_size=group_size).load(KEYS)
    assert _snapshot(read, KEYS) == _snapshot(written, KEYS)


def test_every_key_has_ttl(redis_client, redis_prefix):
    tables = _tables()
    store = _store(redis_client, redis_prefix, tables)
    store.load(KEYS)
    _fill(tables, KEYS, seed=2)
    store.save(KEYS)

    keys = list(redis_client.scan_iter(match=f"{redis_prefix}:*"))
    assert len(keys) == 3 * len(KEYS)
    for key in keys:
        ttl = redis_client.ttl(key)
        if b":state:load:" in key:
            assert 1200 + DAY - 5 <= ttl <= 1200 + DAY, key
        else:
            assert 8 * DAY - 5 <= ttl <= 8 * DAY, key


def test_subject_without_state_has_no_hash(redis_client, redis_prefix):
    tables = _tables()
    store = _store(redis_client, redis_prefix, tables)
    store.load(KEYS[:2])
    _fill(tables, KEYS[:1], seed=3)
    store.save(KEYS[:2])

    assert redis_client.exists(store.key("load", KEYS[0]), store.key("pattern", KEYS[0])) == 2
    assert redis_client.exists(store.key("load", KEYS[1]), store.key("pattern", KEYS[1])) == 0
    assert redis_client.exists(store.token_key(KEYS[1])) == 1


def test_second_store_fetches_only_changed(redis_client, redis_prefix):
    first_tables, second_tables = _tables(), _tables()
    first = _store(redis_client, redis_prefix, first_tables)
    second = _store(redis_client, redis_prefix, second_tables)
    first.load(KEYS)
    _fill(first_tables, KEYS, seed=4)
    first.save(KEYS)

    assert second.load(KEYS) == KEYS
    assert second.load(KEYS) == []
    assert first.load(KEYS) == []

    _fill(first_tables, KEYS[2:3], seed=5)
    assert first.save(KEYS[2:3]) == []
    assert second.load(KEYS) == [KEYS[2]]
    assert _snapshot(second_tables, KEYS) == _snapshot(first_tables, KEYS)


def test_expired_hash_is_fetched_again(redis_client, redis_prefix):
    tables, other_tables = _tables(), _tables()
    store = _store(redis_client, redis_prefix, tables)
    store.load(KEYS)
    _fill(tables, KEYS, seed=6)
    store.save(KEYS)
    other = _store(redis_client, redis_prefix, other_tables)
    other.load(KEYS)

    redis_client.delete(store.key("load", KEYS[1]))

    assert other.load(KEYS) == [KEYS[1]]
    assert other_tables["recent"].take(KEYS[1:2]).known.tolist() == [False]
    assert other_tables["hours"].take(KEYS[1:2]).known.tolist() == [True]


def test_save_rejects_subjects_changed_by_another(redis_client, redis_prefix, caplog):
    first_tables, second_tables = _tables(), _tables()
    first = _store(redis_client, redis_prefix, first_tables)
    second = _store(redis_client, redis_prefix, second_tables)
    first.load(KEYS)
    second.load(KEYS)
    _fill(first_tables, KEYS, seed=7)
    _fill(second_tables, KEYS[:2], seed=8)
    assert second.save(KEYS[:2]) == []

    with caplog.at_level("WARNING", logger="workers.state_store"):
        rejected = first.save(KEYS)

    assert rejected == KEYS[:2]
    assert "state of 2 subjects not written" in caplog.text
    assert first.load(KEYS) == KEYS[:2]
    assert _snapshot(first_tables, KEYS[:2]) == _snapshot(second_tables, KEYS[:2])


def test_stray_key_reads_as_empty(redis_client, redis_prefix, caplog):
    tables = _tables()
    store = _store(redis_client, redis_prefix, tables)
    store.load(KEYS[:2])
    _fill(tables, KEYS[:2], seed=9)
    store.save(KEYS[:2])
    redis_client.delete(store.key("pattern", KEYS[0]))
    redis_client.rpush(store.key("pattern", KEYS[0]), "left by another tool")
    redis_client.delete(store.token_key(KEYS[1]))
    redis_client.hset(store.token_key(KEYS[1]), "field", "value")

    reader_tables = _tables()
    reader = _store(redis_client, redis_prefix, reader_tables)
    with caplog.at_level("WARNING", logger="workers.state_store"):
        fetched = reader.load(KEYS[:2])

    assert fetched == KEYS[:2]
    assert reader.load(KEYS[:2]) == []
    assert "state of 2 subjects read as empty" in caplog.text
    for table in reader_tables.values():
        assert table.take(KEYS[:2]).known.tolist() == [False, False]

    _fill(reader_tables, KEYS[:2], seed=10)
    assert reader.save(KEYS[:2]) == []
    assert redis_client.type(store.key("pattern", KEYS[0])) == b"hash"
    assert redis_client.type(store.token_key(KEYS[1])) == b"string"


def test_garbage_field_reads_as_empty(redis_client, redis_prefix, caplog):
    tables = _tables()
    store = _store(redis_client, redis_prefix, tables)
    store.load(KEYS[:1])
    _fill(tables, KEYS[:1], seed=11)
    store.save(KEYS[:1])
    redis_client.hset(store.key("pattern", KEYS[0]), "hours", b"\x01garbage")
    redis_client.set(store.token_key(KEYS[0]), b"changed by hand")

    reader_tables = _tables()
    with caplog.at_level("WARNING", logger="detector.state.table"):
        _store(redis_client, redis_prefix, reader_tables).load(KEYS[:1])

    assert "invalid state of 1 subjects" in caplog.text
    assert reader_tables["hours"].take(KEYS[:1]).known.tolist() == [False]
    assert reader_tables["days"].take(KEYS[:1]).known.tolist() == [True]
    assert reader_tables["recent"].take(KEYS[:1]).known.tolist() == [True]


def test_interrupted_save_leaves_whole_subjects(redis_client, redis_prefix):
    tables = _tables()
    store = _store(redis_client, redis_prefix, tables, group_size=2)
    store.load(KEYS)
    _fill(tables, KEYS, seed=12)
    store.save(KEYS)
    old = {key: _subject_snapshot(tables, key) for key in KEYS}
    _fill(tables, KEYS, seed=13)
    new = {key: _subject_snapshot(tables, key) for key in KEYS}

    script, calls = store._save_script, []

    def fail_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise redis.ConnectionError("connection lost between two script calls")
        return script(*args, **kwargs)

    store._save_script = fail_second_call
    with pytest.raises(redis.ConnectionError):
        store.save(KEYS)

    read = _tables()
    _store(redis_client, redis_prefix, read).load(KEYS)
    states = {key: _subject_snapshot(read, key) for key in KEYS}
    assert [states[key] == new[key] for key in KEYS] == [True, True] + [False] * (len(KEYS) - 2)
    assert [states[key] == old[key] for key in KEYS] == [False, False] + [True] * (len(KEYS) - 2)


def test_state_tables_of_key_sharing():
    state = KeySharingState(KeySharingDetector(), retention=7 * DAY)

    tables = state_tables(state)

    assert sorted(tables) == ["country_days", "country_requests", "devices.edges", "marks", "networks", "spread", "subjects"]
    assert tables["devices.edges"] is state.devices.edges


def test_save_splits_groups_by_bytes(redis_client, redis_prefix):
    tables = _tables()
    store = _store(redis_client, redis_prefix, tables, group_size=4)
    _fill(tables, KEYS, seed=14)
    script, calls = store._save_script, []

    def count_calls(*args, **kwargs):
        calls.append(len(kwargs["keys"]) // 3)
        return script(*args, **kwargs)

    store._save_script = count_calls
    store.save(KEYS)
    store.group_bytes = 1
    store.save(KEYS)

    assert calls == [4, 3] + [1] * len(KEYS)


def test_state_tables_refuse_load_windows():
    """The load state's rows live outside SubjectStates: saving its values alone would restore it in part."""
    with pytest.raises(TypeError, match="LoadWindows"):
        state_tables(AutomationLoadState(AutomationDetector()))


def test_state_tables_refuse_open_day_counts():
    """The anomaly state's value counts live outside SubjectStates, like the load state's rows."""
    with pytest.raises(TypeError, match="OpenDayCounts"):
        state_tables(AnomalyDayState(AnomalyDetector(load_model())))
