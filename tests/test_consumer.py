"""The stream consumer against real Redis: dead letters, redelivery, idempotency, window expiry."""

import logging
import threading
import time

import numpy as np
import orjson
import sqlalchemy.exc
import pytest

from detector.model_registry import load_model
from detector.pipeline import default_detectors
from detector.store import open_store
from workers import consumer as consumer_module
from workers.consumer import StateWorkersError, StreamConsumer, StreamSettings
from workers.entries import clock_tick
from workers.publish import DecisionPublisher, subject_key
from workers.state_consumer import StateSettings
from workers.window import EventWindows, decode_chunks
from tests.factories import DAY, HOUR, T0, events, frame, record

pytestmark = pytest.mark.slow


def _event(number, key="key-1", **changes):
    changes.setdefault("ts", T0 + number * 4.0)
    return record(number, key=key, **changes)


@pytest.fixture
def make_consumer(redis_client, redis_prefix, sqlite_url, plans, policy):
    store = open_store(sqlite_url)

    def build(**settings):
        options = {
            "stream": f"{redis_prefix}:events", "group": "workers", "dead_letter": f"{redis_prefix}:dead",
            "block_ms": 10, "claim_idle_ms": 60_000, **settings,
        }
        consumer = StreamConsumer(
            redis_client, store, plans=plans, policy=policy, detectors=default_detectors(load_model()),
            windows=EventWindows(redis_client, prefix=redis_prefix),
            publisher=DecisionPublisher(redis_client, prefix=redis_prefix),
            settings=StreamSettings(**options),
        )
        consumer.ensure_group()
        return consumer

    build.store = store
    return build


def _append(redis_client, stream, records):
    for item in records:
        redis_client.xadd(stream, {"event": orjson.dumps(item) if isinstance(item, dict) else item})


def _drain(consumer):
    total = 0
    while (outcome := consumer.process_once()).entries:
        total += outcome.events
    return total


def test_bot_through_stream_gets_throttled(make_consumer, redis_client):
    consumer = make_consumer(batch_size=200)
    _append(redis_client, consumer.settings.stream, [_event(number) for number in range(900)])

    events = _drain(consumer)

    assert events == 900
    decisions = make_consumer.store.all_decisions()
    assert any(decision.action == "throttle" and "automation" in decision.reasons for decision in decisions)
    assert redis_client.xpending(consumer.settings.stream, "workers")["pending"] == 0


def test_malformed_entries_dead_lettered_not_blocking(make_consumer, redis_client):
    consumer = make_consumer()
    _append(redis_client, consumer.settings.stream, [b"{not json", _event(1, ts="2026-13-01T00:00:00Z"), _event(2), b"[1, 2]"])

    outcome = consumer.process_once()

    assert outcome.entries == 4
    assert outcome.events == 1
    assert outcome.dead == 3
    reasons = [fields[b"reason"].decode() for _, fields in redis_client.xrange(consumer.settings.dead_letter)]
    assert any("invalid JSON" in reason for reason in reasons)
    assert any("ts: not an RFC 3339 time or epoch seconds: '2026-13-01T00:00:00Z'" in reason for reason in reasons)
    assert any("not a JSON object" in reason for reason in reasons)
    assert redis_client.xpending(consumer.settings.stream, "workers")["pending"] == 0


def test_clock_tick_neither_event_nor_dead_letter(make_consumer, redis_client):
    consumer = make_consumer()
    redis_client.xadd(consumer.settings.stream, clock_tick(1795431600.0))
    _append(redis_client, consumer.settings.stream, [_event(1)])

    outcome = consumer.process_once()

    assert outcome.entries == 2
    assert outcome.events == 1
    assert outcome.dead == 0
    assert redis_client.xlen(consumer.settings.dead_letter) == 0
    assert redis_client.xpending(consumer.settings.stream, "workers")["pending"] == 0


def test_oversized_entry_dead_lettered(make_consumer, redis_client, monkeypatch):
    monkeypatch.setattr("workers.entries.MAX_LINE_BYTES", 4096)
    consumer = make_consumer()
    _append(redis_client, consumer.settings.stream, [_event(1, user_agent="x" * 5000), _event(2)])

    outcome = consumer.process_once()

    assert outcome.events == 1
    assert outcome.dead == 1
    reasons = [fields[b"reason"].decode() for _, fields in redis_client.xrange(consumer.settings.dead_letter)]
    assert len(reasons) == 1
    assert "is longer than the limit of 4,096 bytes" in reasons[0]


def test_unacknowledged_entries_claimed_by_next_worker(make_consumer, redis_client, redis_prefix):
    first = make_consumer(consumer="worker-a")
    _append(redis_client, first.settings.stream, [_event(number) for number in range(50)])
    # worker-a reads the batch and dies before acknowledging it.
    redis_client.xreadgroup("workers", "worker-a", {first.settings.stream: ">"}, count=100)
    assert redis_client.xpending(first.settings.stream, "workers")["pending"] == 50

    second = make_consumer(consumer="worker-b", claim_idle_ms=0)
    outcome = second.process_once()

    assert outcome.claimed is True
    assert outcome.events == 50
    assert redis_client.xpending(first.settings.stream, "workers")["pending"] == 0
    assert EventWindows(redis_client, prefix=redis_prefix).count("key", "key-1") == 50


class _Killed(BaseException):
    """Ends a worker where a SIGKILL could, without running its clean-up."""


def test_crash_before_publish_still_publishes(make_consumer, redis_client, redis_prefix, monkeypatch):
    first = make_consumer(consumer="worker-a", batch_size=1000)
    # A bot of the last hour, so that its throttles are still in force.
    start = time.time() - 3600
    _append(redis_client, first.settings.stream, [_event(number, ts=start + number * 4.0) for number in range(900)])

    def crash(decisions, **options):
        if decisions:
            raise _Killed

    monkeypatch.setattr(first.publisher, "publish", crash)
    with pytest.raises(_Killed):
        first.process_once()
    second = make_consumer(consumer="worker-b", batch_size=1000, claim_idle_ms=0)
    outcome = second.process_once()

    in_force = make_consumer.store.active_decisions()
    published = redis_client.get(subject_key(redis_prefix, "key", "key-1"))
    assert outcome.claimed is True
    assert in_force
    assert published is not None
    assert {entry["id"] for entry in orjson.loads(published)["active"]} == {decision.id for decision in in_force}


def test_window_worker_refused_beside_state_workers(make_consumer, redis_client, redis_prefix):
    partitions_key = StateSettings(prefix=redis_prefix).partitions_key
    # A state worker on the same prefix notes its partition count when it starts.
    redis_client.set(partitions_key, 1)

    with pytest.raises(StateWorkersError, match=f"{partitions_key} exists, so state workers run on {redis_prefix}:events"):
        make_consumer(state_partitions_key=partitions_key)
    assert redis_client.exists(f"{redis_prefix}:events") == 0


def test_window_worker_notes_itself_while_running(make_consumer, redis_client, redis_prefix):
    key = StateSettings(prefix=redis_prefix).window_workers_key
    consumer = make_consumer(window_workers_key=key, consumer="window-1")

    consumer.process_once()
    expiry = redis_client.zscore(key, "window-1")
    consumer.run(threading.Event(), max_idle_batches=1)

    assert expiry > time.time() * 1000 + 20_000
    assert 0 < redis_client.pttl(key) <= 30_000 or not redis_client.exists(key)
    assert redis_client.zscore(key, "window-1") is None


def test_redelivered_events_counted_once(make_consumer, redis_client, redis_prefix):
    consumer = make_consumer(batch_size=1000)
    records = [_event(number) for number in range(300)]
    _append(redis_client, consumer.settings.stream, records)
    _drain(consumer)
    decisions = {decision.id for decision in make_consumer.store.all_decisions()}

    # The same requests arrive again (a gateway retry, or a redelivery after a crash).
    _append(redis_client, consumer.settings.stream, records)
    _drain(consumer)

    assert EventWindows(redis_client, prefix=redis_prefix).count("key", "key-1") == 300
    assert {decision.id for decision in make_consumer.store.all_decisions()} == decisions


def test_windows_always_expire(make_consumer, redis_client, redis_prefix):
    consumer = make_consumer()
    _append(redis_client, consumer.settings.stream, [_event(number, key=f"key-{number % 7}") for number in range(70)])

    _drain(consumer)

    keys = list(redis_client.scan_iter(match=f"{redis_prefix}:window:*"))
    tokens = list(redis_client.scan_iter(match=f"{redis_prefix}:window-token:*"))
    assert len(keys) == 7
    assert len(tokens) == 7
    assert all(0 < redis_client.ttl(key) <= 8 * 86400 for key in keys + tokens)


def test_window_trims_events_older_than_a_week(make_consumer, redis_client, redis_prefix):
    consumer = make_consumer()
    _append(redis_client, consumer.settings.stream, [_event(1), _event(2, ts=T0 + 8 * 86400, request_id="late")])

    _drain(consumer)

    stored = decode_chunks(redis_client.zrange(f"{redis_prefix}:window:key:key-1", 0, -1))
    assert stored["request_id"].to_pylist() == ["late"]


def test_stream_and_batch_make_same_decisions(make_consumer, redis_client, tmp_path):
    from detector.batch import BatchOptions, run_batch
    from detector.simulate import simulate_traffic

    traffic = simulate_traffic(tmp_path / "traffic", keys=60, days=2, seed=4)
    batch = run_batch(BatchOptions(paths=[traffic.events_path], database_url=f"sqlite:///{tmp_path}/batch.db"))
    consumer = make_consumer(batch_size=400)
    with traffic.events_path.open("rb") as lines:
        _append(redis_client, consumer.settings.stream, [line.strip() for line in lines])

    _drain(consumer)

    streamed = {decision.id for decision in make_consumer.store.all_decisions()}
    assert batch.decisions
    assert streamed == {decision.id for decision in batch.decisions}


def test_plan_change_scores_earlier_events_again(make_consumer, redis_client, plans, policy):
    """Detectors read every event under the plan of the subject's last request, so a new plan can flag earlier events."""
    from detector.pipeline import score_events

    rng = np.random.default_rng(1)
    days = [T0 + day * DAY + 9 * HOUR + rng.uniform(0, 8 * HOUR, 30) for day in range(2)]
    images = events("key-1", np.sort(np.concatenate(days)), plan="image-basic", images=1,
                    endpoint="/v1/images/generations")
    downgraded = events("key-1", T0 + 2 * DAY + 10 * HOUR + np.arange(5) * 60.0, plan="text")
    batch = score_events(frame(images, downgraded), plans=plans, policy=policy,
                         detectors=default_detectors(load_model()))
    consumer = make_consumer()

    for part in (images, downgraded):
        _append(redis_client, consumer.settings.stream, part.to_dict("records"))
        _drain(consumer)

    assert batch.decisions
    assert {decision.id for decision in make_consumer.store.all_decisions()} == {decision.id for decision in batch.decisions}


def test_pushed_file_scores_as_batch(make_consumer, redis_client, redis_prefix, tmp_path):
    from click.testing import CliRunner

    from detector.batch import BatchOptions, run_batch
    from detector.cli import main
    from detector.simulate import simulate_traffic
    from tests.conftest import REDIS_URL

    traffic = simulate_traffic(tmp_path / "traffic", keys=60, days=2, seed=4)
    batch = run_batch(BatchOptions(paths=[traffic.events_path], database_url=f"sqlite:///{tmp_path}/batch.db"))
    consumer = make_consumer(batch_size=400)
    arguments = ["push", str(traffic.events_path), "--redis", REDIS_URL, "--prefix", redis_prefix,
                 "--rejects", str(tmp_path / "rejects.txt")]

    pushed = CliRunner().invoke(main, arguments)
    _drain(consumer)

    assert pushed.exit_code == 0, pushed.output
    assert f"{len(batch.read.frame):,} events appended to {redis_prefix}:events" in pushed.output
    assert redis_client.xlen(consumer.settings.stream) == len(batch.read.frame)
    streamed = {decision.id for decision in make_consumer.store.all_decisions()}
    assert batch.decisions
    assert streamed == {decision.id for decision in batch.decisions}


def test_push_without_valid_events_fails(redis_client, redis_prefix, tmp_path):
    from click.testing import CliRunner

    from detector.cli import main
    from tests.conftest import REDIS_URL

    events = tmp_path / "events.jsonl"
    events.write_text('{"request_id": "r1", "ts": "2026-13-01T00:00:00Z"}\n')
    arguments = ["push", str(events), "--redis", REDIS_URL, "--prefix", redis_prefix, "--rejects", str(tmp_path / "r.txt")]

    pushed = CliRunner().invoke(main, arguments)

    assert pushed.exit_code == 2
    assert "no valid events" in pushed.output
    assert (tmp_path / "r.txt").read_text().startswith(f"{events}:1:")
    assert redis_client.exists(f"{redis_prefix}:events") == 0


def test_push_prints_reader_warnings(redis_client, redis_prefix, tmp_path):
    import gzip

    from click.testing import CliRunner

    from detector.cli import main
    from tests.conftest import REDIS_URL

    secret = "sk-proj-" + "A1b2C3d4E5f6G7h8J9k0"
    lines = [orjson.dumps(_event(number, key=secret if number == 0 else "key-1")) for number in range(200)]
    compressed = gzip.compress(b"\n".join(lines) + b"\n")
    events = tmp_path / "events.jsonl.gz"
    events.write_bytes(compressed[: len(compressed) // 2])
    arguments = ["push", str(events), "--redis", REDIS_URL, "--prefix", redis_prefix, "--rejects", str(tmp_path / "r.txt")]

    pushed = CliRunner().invoke(main, arguments)

    assert pushed.exit_code == 0, pushed.output
    assert f"warning: {events}: 1 key_id values looked like API key secrets" in pushed.output
    assert f"warning: {events}: truncated gzip stream" in pushed.output
    assert secret not in pushed.output


class _StoreDownTwice:
    """The real store, except that its first two writes fail as a lost database connection does."""

    def __init__(self, store):
        self._store = store
        self.failures = 0

    def save_findings(self, findings):
        if self.failures < 2:
            self.failures += 1
            raise sqlalchemy.exc.OperationalError("INSERT INTO findings", {}, ConnectionError("server closed the connection"))
        return self._store.save_findings(findings)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_database_outage_retries_the_batch_without_losing_it(make_consumer, redis_client):
    consumer = make_consumer(batch_size=1000)
    real_store = consumer.store
    consumer.store = _StoreDownTwice(real_store)
    _append(redis_client, consumer.settings.stream, [_event(number) for number in range(900)])
    stop = threading.Event()

    runner = threading.Thread(target=consumer.run, args=(stop,), kwargs={"max_idle_batches": 3})
    runner.start()
    runner.join(timeout=60)
    stop.set()

    assert consumer.store.failures == 2
    assert redis_client.xpending(consumer.settings.stream, "workers")["pending"] == 0
    assert any("automation" in decision.reasons for decision in real_store.all_decisions())


def test_window_keeps_ids_that_look_like_times(redis_client, redis_prefix):
    windows = EventWindows(redis_client, prefix=redis_prefix)
    fresh = frame(events("2026-11-23T10:00:00", [T0, T0 + 60]))
    fresh["request_id"] = ["2026-11-23T10:00:00", "1795392000"]

    windows.extend(fresh)
    loaded = windows.load([("key", "2026-11-23T10:00:00")], T0 + 60)

    assert list(loaded["key_id"]) == ["2026-11-23T10:00:00"] * 2
    assert sorted(loaded["request_id"]) == ["1795392000", "2026-11-23T10:00:00"]


def test_window_reads_members_of_json_format(redis_client, redis_prefix):
    windows = EventWindows(redis_client, prefix=redis_prefix)
    older = frame(events("key-1", [T0, T0 + 60]))
    members = older.to_json(orient="records", lines=True, double_precision=15).encode().splitlines()
    redis_client.zadd(windows.key("key", "key-1"), dict(zip(members, older["ts"])))

    windows.extend(frame(events("key-1", [T0 + 120])))
    loaded = windows.load([("key", "key-1")], T0 + 120)

    assert list(loaded.sort_values("ts")["ts"]) == [T0, T0 + 60, T0 + 120]
    assert set(loaded["request_id"]) >= set(older["request_id"])


def test_window_compacts_chunks_keeping_newest(redis_client, redis_prefix):
    windows = EventWindows(redis_client, prefix=redis_prefix, max_chunks=3, max_events=8)
    batches = [frame(events("key-1", [T0 + 10 * batch + second for second in range(3)])) for batch in range(4)]
    for batch in batches:
        windows.extend(batch)
    windows.extend(batches[3])  # a redelivered batch stores its requests again

    key = windows.key("key", "key-1")
    newest = [request for batch in batches for request in batch["request_id"]][-8:]
    assert redis_client.zcard(key) <= 3
    assert 0 < redis_client.ttl(key) <= 8 * 86400
    assert windows.count("key", "key-1") == 8
    assert sorted(windows.load([("key", "key-1")], T0 + 40)["request_id"]) == sorted(newest)


def test_window_skips_unreadable_members(redis_client, redis_prefix, caplog):
    windows = EventWindows(redis_client, prefix=redis_prefix, max_chunks=3)
    windows.extend(frame(events("key-1", [T0, T0 + 60])))
    key = windows.key("key", "key-1")
    stored = redis_client.zrange(key, 0, -1)[0]
    unreadable = [b"\x00garbage\xff", stored[: len(stored) // 2], b"{not json", b""]
    redis_client.zadd(key, {member: T0 + 60 for member in unreadable})

    with caplog.at_level(logging.WARNING, logger="workers.window"):
        loaded = windows.load([("key", "key-1")], T0 + 120)
        windows.extend(frame(events("key-1", [T0 + 120])))

    assert sorted(loaded["ts"]) == [T0, T0 + 60]
    assert caplog.text.count("skipping an unreadable member") >= len(unreadable)
    assert redis_client.zcard(key) == 1
    assert 0 < redis_client.ttl(key)
    assert sorted(windows.load([("key", "key-1")], T0 + 120)["ts"]) == [T0, T0 + 60, T0 + 120]


def _wait_until(condition, deadline_s=60.0):
    """Poll ``condition`` until it is true or ``deadline_s`` passes; return its last value."""
    give_up = time.monotonic() + deadline_s
    while not (result := condition()) and time.monotonic() < give_up:
        time.sleep(0.05)
    return result


def test_stream_deleted_while_blocked_keeps_running(make_consumer, redis_client, redis_prefix):
    consumer = make_consumer(block_ms=30_000)
    stop = threading.Event()
    worker = threading.Thread(target=consumer.run, args=(stop,))
    worker.start()
    try:
        blocked = lambda: any(  # noqa: E731
            entry.get("cmd") == "xreadgroup" and "b" in entry.get("flags", "") for entry in redis_client.client_list()
        )
        assert _wait_until(blocked)

        # FLUSHALL, or a DEL of the stream, unblocks XREADGROUP with an UNBLOCKED error (Redis 7).
        redis_client.delete(consumer.settings.stream)
        _append(redis_client, consumer.settings.stream, [_event(number) for number in range(5)])
        windows = EventWindows(redis_client, prefix=redis_prefix)
        assert _wait_until(lambda: not worker.is_alive() or windows.count("key", "key-1") == 5)
        assert worker.is_alive()
    finally:
        stop.set()
        redis_client.delete(consumer.settings.stream)  # ends the worker's next wait at once
        worker.join()
    assert windows.count("key", "key-1") == 5


def test_own_pending_entry_deleted_is_dead_lettered(make_consumer, redis_client):
    consumer = make_consumer(consumer="worker-a")
    _append(redis_client, consumer.settings.stream, [_event(number) for number in range(3)])
    redis_client.xreadgroup("workers", "worker-a", {consumer.settings.stream: ">"}, count=10)
    deleted = redis_client.xrange(consumer.settings.stream, count=1)[0][0]
    redis_client.xdel(consumer.settings.stream, deleted)
    # As after a failed batch: the consumer reads its own unacknowledged entries first.
    consumer._retry_own_pending = True

    outcome = consumer.process_once()

    assert outcome.entries == 3
    assert outcome.events == 2
    assert outcome.dead == 1
    assert redis_client.xpending(consumer.settings.stream, "workers")["pending"] == 0


def test_window_cache_sees_other_writers(redis_client, redis_prefix):
    mine = EventWindows(redis_client, prefix=redis_prefix, max_chunks=3)
    other = EventWindows(redis_client, prefix=redis_prefix, max_chunks=3)
    subjects = [("key", "key-1")]
    key = mine.key("key", "key-1")
    mine.extend(frame(events("key-1", [T0, T0 + 60])))
    assert len(mine.load(subjects, T0 + 60)) == 2

    # Another worker writes between this worker's read and its own write.
    other.extend(frame(events("key-1", [T0 + 120])))
    mine.extend(frame(events("key-1", [T0 + 180])))
    assert sorted(mine.load(subjects, T0 + 180)["ts"]) == [T0, T0 + 60, T0 + 120, T0 + 180]

    other.extend(frame(events("key-1", [T0 + 240])))  # a fourth chunk: the window is compacted into one
    assert redis_client.zcard(key) == 1
    assert sorted(mine.load(subjects, T0 + 240)["ts"]) == [T0, T0 + 60, T0 + 120, T0 + 180, T0 + 240]

    redis_client.delete(key, mine.token_key(key))  # Redis lost its data
    assert mine.load(subjects, T0 + 240).empty


def test_window_cache_reads_as_redis(redis_client, redis_prefix):
    cached = EventWindows(redis_client, prefix=redis_prefix)
    uncached = EventWindows(redis_client, prefix=redis_prefix, cache_bytes=0)
    subjects = [("key", "key-1"), ("key", "key-2")]
    keys = [cached.key(*subject) for subject in subjects]
    # Out-of-order batches, equal chunk scores, a redelivered batch and events falling out of the week.
    starts = [T0, T0 + 3600, T0 + 600, T0 + 3600, T0 + 8 * 86400, T0 + 8 * 86400 + 60]
    batches = [frame(events("key-1", [start, start + 1]), events("key-2", [start + 2])) for start in starts]
    batches.insert(3, batches[2])

    for index, batch in enumerate(batches):
        cached.load(subjects, float(batch["ts"].max()))
        cached.extend(batch)
        newest = float(batch["ts"].max())
        tokens = [redis_client.get(cached.token_key(key)) for key in keys]
        if index:  # the first write finds no cached copy to update
            sizes = [redis_client.zcard(key) for key in keys]
            assert all(cached.cache.get(key, token, size) is not None for key, token, size in zip(keys, tokens, sizes))
        assert cached.load(subjects, newest).equals(uncached.load(subjects, newest))
    assert len(cached.load(subjects, T0 + 8 * 86400 + 62)) == 6


def test_window_cache_sees_evicted_window(redis_client, redis_prefix):
    cached = EventWindows(redis_client, prefix=redis_prefix)
    uncached = EventWindows(redis_client, prefix=redis_prefix, cache_bytes=0)
    subjects = [("key", "key-1")]
    key = cached.key("key", "key-1")
    cached.extend(frame(events("key-1", [T0, T0 + 60])))
    assert len(cached.load(subjects, T0 + 60)) == 2

    # Redis under maxmemory-policy allkeys-lru may evict the window and keep its token.
    redis_client.delete(key)
    assert cached.load(subjects, T0 + 60).empty

    # Evicted again before this worker's next write, which then finds its own token.
    cached.extend(frame(events("key-1", [T0 + 120])))
    redis_client.delete(key)
    cached.extend(frame(events("key-1", [T0 + 180])))
    assert cached.load(subjects, T0 + 180).equals(uncached.load(subjects, T0 + 180))
    assert len(cached.load(subjects, T0 + 180)) == 1


def test_window_load_keeps_repeats_on_request(redis_client, redis_prefix):
    windows = EventWindows(redis_client, prefix=redis_prefix)
    batch = frame(events("key-1", [T0, T0 + 60]))
    windows.extend(batch)
    windows.extend(frame(batch, events("key-1", [T0 + 120])))  # a redelivered batch with one new request

    assert len(windows.load([("key", "key-1")], T0 + 120)) == 3
    assert len(windows.load([("key", "key-1")], T0 + 120, distinct=False)) == 5


def test_stray_window_key_does_not_stop_stream(make_consumer, redis_client, redis_prefix):
    consumer = make_consumer(batch_size=200)
    window_key = f"{redis_prefix}:window:key:key-1"
    redis_client.set(window_key, b"not a window")
    _append(redis_client, consumer.settings.stream, [_event(number) for number in range(50)])

    events = _drain(consumer)

    assert events == 50
    assert redis_client.xpending(consumer.settings.stream, "workers")["pending"] == 0
    assert redis_client.type(window_key) == b"zset"


def test_far_future_event_keeps_other_windows(make_consumer, redis_client, monkeypatch):
    consumer = make_consumer()
    stream = consumer.settings.stream
    start = T0 + 3 * DAY
    _append(redis_client, stream, [record(number, ts=start + number) for number in range(450)])
    _drain(consumer)
    scored = []
    original = consumer_module.score_events
    monkeypatch.setattr(consumer_module, "score_events", lambda frame, **options: scored.append(frame) or original(frame, **options))

    # One event of another key a year ahead, beside 50 new events of key-1.
    late = [record(450 + number, ts=start + 450 + number) for number in range(50)]
    _append(redis_client, stream, [*late, record(0, ts=start + 365 * DAY, key="key-2")])
    _drain(consumer)

    assert len(scored) == 1
    assert int((scored[0]["key_id"] == "key-1").sum()) == 500
