"""EventWindows against real Redis: expiry of every key it writes, script reloads and the window's start."""

import pandas as pd
import pyarrow as pa
import pytest

from detector.events import COLUMNS
from workers import window
from workers.window import EventWindows, decode_chunks
from tests.factories import DAY, T0, events, frame

pytestmark = pytest.mark.slow

TTL = 7 * 86400 + 86400


def _unsorted(*parts: pd.DataFrame) -> pd.DataFrame:
    """Concatenate parts in the order given, as a batch arrives, without sorting by time."""
    return pd.concat(parts, ignore_index=True).astype(COLUMNS)


def _assert_all_expire(redis_client, prefix):
    keys = list(redis_client.scan_iter(match=f"{prefix}:window*"))
    assert keys
    for key in keys:
        assert 0 < redis_client.ttl(key) <= TTL, key


def test_extend_sets_ttl_on_every_key(redis_client, redis_prefix, monkeypatch):
    monkeypatch.setattr(window, "SCRIPT_SUBJECTS", 2)
    windows = EventWindows(redis_client, prefix=redis_prefix)
    # Keys left without a TTL, as another tool or a lost EXPIRE would leave them.
    redis_client.zadd(windows.key("key", "key-1"), {b"{}": T0})
    redis_client.set(windows.token_key(windows.key("key", "key-2")), b"old")

    windows.extend(frame(*[events(f"key-{number}", [T0 + number, T0 + 60]) for number in range(5)]))

    assert len(list(redis_client.scan_iter(match=f"{redis_prefix}:window:*"))) == 5
    assert len(list(redis_client.scan_iter(match=f"{redis_prefix}:window-token:*"))) == 5
    _assert_all_expire(redis_client, redis_prefix)


def test_compaction_sets_ttl_on_every_key(redis_client, redis_prefix):
    windows = EventWindows(redis_client, prefix=redis_prefix, max_chunks=2)
    for start in (T0, T0 + 60, T0 + 120):
        windows.extend(frame(events("key-1", [start]), events("key-2", [start + 1])))

    assert redis_client.zcard(windows.key("key", "key-1")) == 1
    _assert_all_expire(redis_client, redis_prefix)


def test_extend_updates_cache_across_script_calls(redis_client, redis_prefix, monkeypatch):
    monkeypatch.setattr(window, "SCRIPT_SUBJECTS", 2)
    windows = EventWindows(redis_client, prefix=redis_prefix)
    names = ("key-1", "key-2", "key-3", "key-4", "key-5")
    subjects = [("key", name) for name in names]
    windows.extend(frame(*[events(name, [T0]) for name in names]))
    windows.load(subjects, T0)

    windows.extend(frame(*[events(name, [T0 + 60] * number) for number, name in enumerate(names[1:], start=1)]))

    for number, name in enumerate(names):
        key = windows.key("key", name)
        token = redis_client.get(windows.token_key(key))
        members = 2 if number else 1
        assert windows.cache.get(key, token, members) is not None, name
        assert sum(chunk.batch.num_rows for chunk in windows.cache.get(key, token, members).chunks) == number + 1, name


def test_scripts_reloaded_after_noscript(redis_client, redis_prefix):
    windows = EventWindows(redis_client, prefix=redis_prefix)
    # Redis returns NOSCRIPT for an unknown SHA, as after a restart, so no test flushes the shared server's scripts.
    windows._extend_script.sha = "0" * 40
    windows._state_script.sha = "0" * 40

    windows.extend(frame(events("key-1", [T0, T0 + 60])))

    assert len(windows.load([("key", "key-1")], T0 + 60)) == 2


def test_load_drops_events_before_window_start(redis_client, redis_prefix):
    windows = EventWindows(redis_client, prefix=redis_prefix, max_chunks=2)
    uncached = EventWindows(redis_client, prefix=redis_prefix, cache_bytes=0)
    subjects = [("key", "key-1")]
    # Both chunks cross the window's start: the compacted one in time order, the newer one out of order.
    windows.extend(frame(events("key-1", [T0, T0 + 100])))
    windows.extend(frame(events("key-1", [T0 + 200])))
    windows.extend(frame(events("key-1", [T0 + 300])))
    windows.load(subjects, T0 + 300)
    windows.extend(_unsorted(events("key-1", [T0 + 250, T0 + 50, T0 + 400])))
    assert redis_client.zcard(windows.key("key", "key-1")) == 2
    newest = T0 + 7 * DAY + 150

    loaded = windows.load(subjects, newest, distinct=False)

    stored = decode_chunks(redis_client.zrange(windows.key("key", "key-1"), 0, -1))
    expected = stored.filter(pa.compute.greater_equal(stored["ts"], newest - 7 * DAY)).to_pandas()
    assert loaded["ts"].tolist() == [T0 + 200, T0 + 300, T0 + 250, T0 + 400]
    assert loaded.equals(expected)
    assert loaded.equals(uncached.load(subjects, newest, distinct=False))
    assert windows.load(subjects, T0 + 400, distinct=False).equals(stored.to_pandas())
    assert windows.load(subjects, T0 + 8 * DAY + 500).empty


def test_stray_window_key_read_as_empty(redis_client, redis_prefix, caplog):
    windows = EventWindows(redis_client, prefix=redis_prefix)
    windows.extend(frame(events("key-1", [T0, T0 + 60]), events("key-2", [T0 + 30])))
    # Another tool wrote a string where the window of key-1 belongs.
    redis_client.delete(windows.key("key", "key-1"))
    redis_client.set(windows.key("key", "key-1"), b"not a window")

    loaded = windows.load([("key", "key-1"), ("key", "key-2")], T0 + 120)

    assert list(loaded["key_id"]) == ["key-2"]
    assert "another type" in caplog.text


def test_extend_replaces_stray_keys(redis_client, redis_prefix, caplog):
    windows = EventWindows(redis_client, prefix=redis_prefix)
    redis_client.set(windows.key("key", "key-1"), b"not a window")
    redis_client.hset(windows.token_key(windows.key("key", "key-2")), "field", "value")

    windows.extend(frame(events("key-1", [T0]), events("key-2", [T0 + 10])))
    loaded = windows.load([("key", "key-1"), ("key", "key-2")], T0 + 60)

    assert redis_client.type(windows.key("key", "key-1")) == b"zset"
    assert redis_client.type(windows.token_key(windows.key("key", "key-2"))) == b"string"
    assert sorted(loaded["key_id"]) == ["key-1", "key-2"]
    assert "deleted window or token keys of another type" in caplog.text
    _assert_all_expire(redis_client, redis_prefix)


def test_cache_keeps_merged_rows_across_own_writes(redis_client, redis_prefix):
    windows = EventWindows(redis_client, prefix=redis_prefix)
    uncached = EventWindows(redis_client, prefix=redis_prefix, cache_bytes=0)
    subjects = [("key", "key-1")]
    key = windows.key("key", "key-1")

    def cached_window():
        token = redis_client.get(windows.token_key(key))
        return windows.cache.get(key, token, redis_client.zcard(key))

    windows.extend(frame(events("key-1", [T0, T0 + 60])))
    windows.load(subjects, T0 + 60)
    windows.extend(frame(events("key-1", [T0 + 120])))
    # The newest chunk was appended to the rows merged by the load, not merged again on the next load.
    assert cached_window().merged is not None
    assert cached_window().merged.num_rows == 3
    assert windows.load(subjects, T0 + 120).equals(uncached.load(subjects, T0 + 120))

    # A late chunk sorts before the newest one, so its rows are merged again on the next load, in Redis order.
    windows.extend(frame(events("key-1", [T0 + 30])))
    assert cached_window().merged is None
    assert windows.load(subjects, T0 + 120).equals(uncached.load(subjects, T0 + 120))
    assert list(windows.load(subjects, T0 + 120)["ts"]) == [T0 + 30, T0, T0 + 60, T0 + 120]


def test_cache_trims_expired_merged_rows(redis_client, redis_prefix):
    windows = EventWindows(redis_client, prefix=redis_prefix)
    uncached = EventWindows(redis_client, prefix=redis_prefix, cache_bytes=0)
    subjects = [("key", "key-1")]
    # One chunk whose first event leaves the week before its last one does.
    windows.extend(frame(events("key-1", [T0, T0 + DAY])))
    windows.load(subjects, T0 + DAY)

    newest = T0 + 7 * DAY + 60
    windows.extend(frame(events("key-1", [newest])))
    assert list(windows.load(subjects, newest)["ts"]) == [T0 + DAY, newest]
    assert windows.load(subjects, newest).equals(uncached.load(subjects, newest))

    # A read for an earlier end needs the dropped row again, so the rows are merged again from the chunks.
    assert list(windows.load(subjects, T0 + 6 * DAY)["ts"]) == [T0, T0 + DAY, newest]


def test_compaction_keeps_cached_copy(redis_client, redis_prefix):
    windows = EventWindows(redis_client, prefix=redis_prefix, max_chunks=2)
    uncached = EventWindows(redis_client, prefix=redis_prefix, cache_bytes=0)
    subjects = [("key", "key-1")]
    key = windows.key("key", "key-1")
    # A chunk that leaves the week at the next write.
    windows.extend(frame(events("key-1", [T0 - 8 * DAY])))
    for start in (T0, T0 + 60, T0 + 120):
        windows.load(subjects, start)
        windows.extend(frame(events("key-1", [start, start + 1])))

    token = redis_client.get(windows.token_key(key))
    cached = windows.cache.get(key, token, 1)
    # The third chunk in the week made the window crowded; the merged chunk replaced them and the cached copy.
    assert redis_client.zcard(key) == 1
    assert cached is not None
    assert cached.merged.num_rows == 6
    assert windows.load(subjects, T0 + 121).equals(uncached.load(subjects, T0 + 121))


def test_compaction_reads_redis_when_another_worker_wrote(redis_client, redis_prefix):
    mine = EventWindows(redis_client, prefix=redis_prefix, max_chunks=2)
    other = EventWindows(redis_client, prefix=redis_prefix)
    subjects = [("key", "key-1")]
    mine.extend(frame(events("key-1", [T0])))
    other.extend(frame(events("key-1", [T0 + 60])))
    mine.extend(frame(events("key-1", [T0 + 120])))

    assert redis_client.zcard(mine.key("key", "key-1")) == 1
    assert sorted(mine.load(subjects, T0 + 120)["ts"]) == [T0, T0 + 60, T0 + 120]


def test_compactions_spread_over_writes(redis_client, redis_prefix):
    windows = EventWindows(redis_client, prefix=redis_prefix, max_chunks=2, max_compactions=2)
    names = [f"key-{number}" for number in range(5)]
    for start in (T0, T0 + 60, T0 + 120):
        windows.extend(frame(*[events(name, [start]) for name in names]))
    sizes = [redis_client.zcard(windows.key("key", name)) for name in names]

    windows.extend(frame(*[events(name, [T0 + 180]) for name in names]))
    after = [redis_client.zcard(windows.key("key", name)) for name in names]

    # All five became crowded at the third write, and two were merged at each write.
    assert sorted(sizes) == [1, 1, 3, 3, 3]
    assert sorted(after) == [1, 1, 2, 2, 4]
