"""The state worker under faults: hostile checkpoints and entries, lost Redis data, mixed settings."""

from __future__ import annotations

import logging
import time

import orjson
import pytest
import redis
from click.testing import CliRunner

from detector.cli import main
from detector.model_registry import load_model
from detector.pipeline import default_detectors
from detector.state.scorer import STREAM_RETENTION, StateScorer
from fairuse_gateway.partitions import MAX_PARTITIONS, partition_of_event
from tests.factories import T0, record
from tests.test_state_consumer import state_worker_builder
from workers.checkpoint import (
    MAGIC,
    CheckpointError,
    PartitionState,
    dump_state,
    load_state,
)
from workers.partitions import PartitionLeases
from workers.publish import subject_key
from workers.repeats import RepeatedRequests
from workers.state_consumer import PartitionCountError, StateSettings, WindowWorkersError


@pytest.fixture(scope="module")
def detectors():
    return default_detectors(load_model())


def _short(text: str) -> bytes:
    encoded = text.encode()
    return b"\x8c" + bytes([len(encoded)]) + encoded


def _call_pickle(module: str, name: str, *arguments: str) -> bytes:
    """Return a protocol-4 pickle that calls ``module``'s attribute ``name`` (dotted) with one list of strings."""
    items = b"".join(_short(argument) for argument in arguments)
    return b"\x80\x04" + _short(module) + _short(name) + b"\x93" + b"](" + items + b"e\x85R."


def test_checkpoint_cannot_reach_a_class_through_dotted_name(plans, detectors, tmp_path):
    marker = tmp_path / "ran"
    # subprocess.Popen is a class, reached from detector.state.scorer through its imports.
    data = MAGIC + bytes([1]) + _call_pickle(
        "detector.state.scorer", "pd._config.localization.subprocess.Popen", "touch", str(marker)
    )

    with pytest.raises(CheckpointError, match="names the global detector.state.scorer.pd"):
        load_state(data, detectors, plans)
    assert not marker.exists()


def _call_with_int(module: str, name: str, number: int) -> bytes:
    return b"\x80\x04" + _short(module) + _short(name) + b"\x93" + b"J" + number.to_bytes(4, "little") + b"\x85R."


def test_checkpoint_cannot_allocate_through_bytearray(plans, detectors):
    # bytearray(n) fills n bytes; a checkpoint of 40 bytes could ask for terabytes. States never need the call.
    data = MAGIC + bytes([1]) + _call_with_int("builtins", "bytearray", 16)

    with pytest.raises(CheckpointError, match="names the global builtins.bytearray"):
        load_state(data, detectors, plans)


def test_undecodable_checkpoint_raises_checkpoint_error(plans, detectors):
    # A string whose bytes are not UTF-8, as a flipped bit can make one.
    data = MAGIC + bytes([1]) + b"\x80\x04\x8c\x02\xff\xfe."

    with pytest.raises(CheckpointError, match="UnicodeDecodeError"):
        load_state(data, detectors, plans)


# Redis loses its data ----------------------------------------------------------------


@pytest.fixture
def make_worker(redis_client, redis_prefix, store, plans, policy, detectors):
    return state_worker_builder(redis_client, redis_prefix, store, plans, policy, detectors)


def _add(redis_client, stream: str, numbers, *, key: str = "key-1", start: float = T0) -> None:
    for number in numbers:
        redis_client.xadd(stream, {"event": orjson.dumps(record(number, ts=start + number, key=key))})


def _flush(redis_client, prefix: str) -> None:
    """Delete every key of ``prefix``, as FLUSHALL or a restart without persistence does."""
    redis_client.delete(*redis_client.scan_iter(match=f"{prefix}:*"))


def test_data_loss_keeps_in_memory_state(make_worker, redis_client, redis_prefix):
    stream = f"{redis_prefix}:events"
    # Without lateness every event reaches the scorer at once, so its subjects show what the state contains.
    worker = make_worker("w0", lateness=0.0)
    _add(redis_client, stream, range(20))
    worker.process_once()
    state = worker.owned[0]
    subjects = len(state.scorer.ranks)

    _flush(redis_client, redis_prefix)
    worker.ensure_groups()
    _add(redis_client, stream, range(20, 30))
    outcome = worker.process_once()

    assert outcome.events == 10
    assert worker.owned[0] is state
    assert len(state.scorer.ranks) == subjects > 0
    assert state.last_id == redis_client.xrange(stream)[-1][0]
    assert redis_client.get(f"{redis_prefix}:lease:0") == b"w0"
    assert redis_client.exists(f"{redis_prefix}:state:0")
    assert _pending(redis_client, stream) == 0


def test_data_loss_before_checkpoint_keeps_state(make_worker, redis_client, redis_prefix, monkeypatch):
    stream = f"{redis_prefix}:events"
    worker = make_worker("w0", lateness=0.0)
    _add(redis_client, stream, range(20))
    _add(redis_client, stream, range(20, 30), key="key-2")
    process_entries = worker.process_entries
    applied = []

    def process_then_lose_data(partition, entries):
        outcome = process_entries(partition, entries)
        applied.append((len(worker.owned[partition].scorer.ranks), worker.owned[partition].last_id))
        # After the round renewed the leases and before its checkpoint, as a FLUSHALL can land.
        _flush(redis_client, redis_prefix)
        return outcome

    monkeypatch.setattr(worker, "process_entries", process_then_lose_data)
    worker.run(max_idle_rounds=3)

    subjects, last_id = applied[0]
    data = redis_client.get(f"{redis_prefix}:state:0")
    assert data is not None
    checkpoint = load_state(data, worker.detectors, worker.plans)
    assert len(applied) == 1
    assert subjects == 2
    assert checkpoint.last_id == last_id
    assert len(checkpoint.scorer.ranks) == subjects


def test_run_recreates_group_after_data_loss(make_worker, redis_client, redis_prefix, monkeypatch):
    stream = f"{redis_prefix}:events"
    worker = make_worker("w0")
    _add(redis_client, stream, range(20))
    republished = []
    monkeypatch.setattr(worker.publisher, "republish", lambda store: republished.append(store) or 0)
    rounds = {"count": 0}
    rebalance = worker.rebalance

    def rebalance_then_lose_data():
        rounds["count"] += 1
        taken = rebalance()
        if rounds["count"] == 3:
            # Between the leases' renewal and the read, as a FLUSHALL can land.
            _flush(redis_client, redis_prefix)
            _add(redis_client, f"{redis_prefix}:other", range(1))
        return taken

    monkeypatch.setattr(worker, "rebalance", rebalance_then_lose_data)
    worker.run(max_idle_rounds=5)

    assert rounds["count"] > 3
    assert len(republished) == 2
    assert redis_client.xinfo_groups(stream)[0]["name"].decode() == "fairuse-workers"
    assert load_state(redis_client.get(f"{redis_prefix}:state:0"), worker.detectors, worker.plans).last_id is not None


def _pending(redis_client, stream: str) -> int:
    return redis_client.xpending(stream, "fairuse-workers")["pending"]


# Checkpoints of other settings ---------------------------------------------------------


def test_checkpoint_without_model_rejected_by_model_worker(plans, detectors):
    without_model = detectors[:-1]
    worker_state = _state(without_model, plans, partitions=1)

    with pytest.raises(CheckpointError, match=r"written with the detectors \[.*\], this worker runs .*'anomaly'\]"):
        load_state(dump_state(worker_state, without_model, plans), detectors, plans)


def test_checkpoint_of_other_partition_count_rejected(plans, detectors):
    data = dump_state(_state(detectors, plans, partitions=1), detectors, plans)

    with pytest.raises(CheckpointError, match="with 1 partitions, this worker has 3"):
        load_state(data, detectors, plans, partitions=3)
    assert load_state(data, detectors, plans, partitions=1).partitions == 1


def test_worker_of_other_partition_count_starts_empty(make_worker, redis_client, redis_prefix, caplog):
    single = make_worker("single")
    _add(redis_client, f"{redis_prefix}:events", range(5))
    single.process_once()
    single.stop()
    # The operator stopped every worker and deleted the noted count, to change it.
    redis_client.delete(f"{redis_prefix}:state-partitions")

    split = make_worker("split", partitions=3)
    with caplog.at_level(logging.ERROR, logger="workers.state_consumer"):
        split.rebalance()

    assert split.owned[0].last_id is None
    assert any(
        entry.getMessage().startswith(f"partition 0: checkpoint {redis_prefix}:state:0 not loaded")
        and "with 1 partitions, this worker has 3" in entry.getMessage()
        for entry in caplog.records
    )


def test_worker_of_other_partition_count_refused(make_worker, redis_client, redis_prefix):
    make_worker("first", partitions=3)

    with pytest.raises(PartitionCountError, match=f"{redis_prefix}:state-partitions says .* run 3 partitions, this worker 1"):
        make_worker("second", partitions=1)
    assert not redis_client.exists(f"{redis_prefix}:events")


def test_state_worker_refused_beside_window_workers(make_worker, redis_client, redis_prefix):
    key = StateSettings(prefix=redis_prefix).window_workers_key
    now_ms = int(time.time() * 1000)
    # A running window worker renews its note; one that stopped long ago left only an expired one.
    redis_client.zadd(key, {"window-1": now_ms + 30_000, "window-old": now_ms - 60_000})

    with pytest.raises(WindowWorkersError, match=f"1 window worker\\(s\\) noted in {key} read {redis_prefix}:events"):
        make_worker("state-1", partitions=1)
    assert not redis_client.exists(f"{redis_prefix}:events")
    # With several partitions, gateways append to streams that window workers do not read.
    make_worker("state-2", partitions=3)


def test_expired_window_note_lets_state_worker_start(make_worker, redis_client, redis_prefix):
    key = StateSettings(prefix=redis_prefix).window_workers_key
    redis_client.zadd(key, {"window-old": int(time.time() * 1000) - 60_000})

    make_worker("state-1", partitions=1)

    assert redis_client.exists(f"{redis_prefix}:events")


def _state(detectors, plans, *, partitions: int) -> PartitionState:
    scorer = StateScorer(detectors=detectors, plans=plans, retention=STREAM_RETENTION)
    return PartitionState(scorer=scorer, repeats=RepeatedRequests(), partitions=partitions)


# Partition counts and take-overs -------------------------------------------------------


@pytest.mark.parametrize("partitions", [0, -3, MAX_PARTITIONS + 1, 100_000])
def test_partition_count_out_of_range_refused(redis_client, partitions):
    with pytest.raises(ValueError, match=f"from 1 to {MAX_PARTITIONS}, not {partitions}"):
        PartitionLeases(redis_client, prefix="unused", partitions=partitions, owner="w0")


def test_cli_refuses_partitions_beyond_limit():
    result = CliRunner().invoke(main, ["worker", "--state", "--partitions", "100000"])

    assert result.exit_code == 2
    assert f"1<=x<={MAX_PARTITIONS}" in result.output


def test_slow_take_overs_keep_their_leases(make_worker, redis_client, redis_prefix, monkeypatch):
    worker = make_worker("w0", partitions=3, lease_ttl_ms=1000)
    load = worker._load_checkpoint

    def slow_load(partition):
        # Each load takes more than a third of the lease, so three outlast it unless renewed between them.
        time.sleep(0.6)
        return load(partition)

    monkeypatch.setattr(worker, "_load_checkpoint", slow_load)
    taken = worker.rebalance()

    assert sorted(taken) == [0, 1, 2]
    assert [redis_client.get(f"{redis_prefix}:lease:{partition}") for partition in range(3)] == [b"w0"] * 3


# Hostile entries -----------------------------------------------------------------------


def test_event_of_other_partition_dead_lettered(make_worker, redis_client, redis_prefix):
    worker = make_worker("w0", partitions=2)
    ours = next(key for key in (f"key-{number}" for number in range(100)) if partition_of_event(f"acct-{key}", key, 2) == 0)
    theirs = next(key for key in (f"key-{number}" for number in range(100)) if partition_of_event(f"acct-{key}", key, 2) == 1)
    # Both appended to partition 0's stream, as a gateway with another partition count would.
    _add(redis_client, f"{redis_prefix}:events:0", range(3), key=ours)
    _add(redis_client, f"{redis_prefix}:events:0", range(3, 5), key=theirs)

    outcome = worker.process_once()

    assert outcome.events == 3
    assert outcome.dead == 2
    reasons = [fields[b"reason"].decode() for _, fields in redis_client.xrange(f"{redis_prefix}:events:dead")]
    assert len(reasons) == 2
    assert all(f"(key '{theirs}') belongs to partition 1 of 2, not 0" in reason for reason in reasons)
    assert _pending(redis_client, f"{redis_prefix}:events:0") == 0


def test_event_far_ahead_dead_lettered(make_worker, redis_client, redis_prefix):
    stream = f"{redis_prefix}:events"
    worker = make_worker("w0")
    _add(redis_client, stream, range(20))
    worker.process_once()
    # A year ahead of this machine's clock, as from a gateway whose clock is wrong.
    ahead = record(99, ts=time.time() + 365 * 86400, key="key-2")
    redis_client.xadd(stream, {"event": orjson.dumps(ahead)})
    worker.process_once()
    _add(redis_client, stream, range(20, 40))

    outcome = worker.process_once()

    reasons = [fields[b"reason"].decode() for _, fields in redis_client.xrange(f"{redis_prefix}:events:dead")]
    assert len(reasons) == 1
    assert "request req-key-2-99: ts " in reasons[0]
    assert "ahead of this worker's clock" in reasons[0]
    assert outcome.events == 20
    assert outcome.beyond_lateness == 0
    assert worker.owned[0].newest == T0 + 39
    assert _pending(redis_client, stream) == 0


class _Killed(BaseException):
    """Ends a worker where a SIGKILL could, without running its clean-up."""


def test_crash_before_publish_still_publishes(make_worker, redis_client, redis_prefix, monkeypatch):
    stream = f"{redis_prefix}:events"
    # A bot of the last hour, so that its throttles are still in force.
    start = time.time() - 3600
    for number in range(900):
        redis_client.xadd(stream, {"event": orjson.dumps(record(number, ts=start + number * 4.0))})
    dying = make_worker("dying", checkpoint_seconds=1e9, lateness=0.0)

    def crash(decisions, **options):
        if decisions:
            raise _Killed

    monkeypatch.setattr(dying.publisher, "publish", crash)
    with pytest.raises(_Killed):
        dying.process_once()
    # The dying worker's lease would expire after its TTL; deleting it stands for that wait.
    redis_client.delete(f"{redis_prefix}:lease:0")
    peer = make_worker("peer", lateness=0.0)
    for _ in range(3):
        peer.process_once()

    in_force = dying.store.active_decisions()
    published = redis_client.get(subject_key(redis_prefix, "key", "key-1"))
    assert in_force
    assert published is not None
    assert {entry["id"] for entry in orjson.loads(published)["active"]} == {decision.id for decision in in_force}


def test_lost_connection_reloads_states_from_checkpoints(make_worker, redis_client, redis_prefix, monkeypatch):
    """Redis may come back from a snapshot older than the states, so they are reloaded, not kept."""
    stream = f"{redis_prefix}:events"
    worker = make_worker("w0", checkpoint_seconds=1e9)
    _add(redis_client, stream, range(10))
    worker.process_once()
    worker.checkpoint({0})
    checkpointed = worker.owned[0].last_id
    _add(redis_client, stream, range(10, 15))
    worker.process_once()
    ahead = worker.owned[0]
    read = worker._read
    calls = {"count": 0}

    def read_once_unreachable(partition, start, block_ms):
        calls["count"] += 1
        if calls["count"] == 1:
            raise redis.ConnectionError("Redis restarted")
        return read(partition, start, block_ms)

    monkeypatch.setattr(worker, "_read", read_once_unreachable)
    monkeypatch.setattr(worker, "stop", lambda: None)
    worker.run(max_idle_rounds=2)

    assert ahead.last_id != checkpointed
    assert worker.owned[0] is not ahead
    assert worker.owned[0].last_id == ahead.last_id
    assert _pending(redis_client, stream) == 5
