"""The state worker against real Redis and PostgreSQL: batch decisions, checkpoints, handover, a killed worker."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import orjson
import pandas as pd
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from detector.gateway_import import ImportReport, StreamSink
from detector.model_registry import load_model
from detector.pipeline import default_detectors
from detector.store import open_store
from detector.store.models import FindingRow
from detector.store.repository import _to_finding, finding_id
from fairuse_gateway.partitions import event_stream, partition_of_event, partition_stream
from tests.conftest import REDIS_URL
from tests.factories import T0, record
from workers.checkpoint import MAGIC, CheckpointError, dump_state, load_state
from workers.partitions import partition_of
from workers.publish import DecisionPublisher
from workers.repeats import RepeatedRequests
from workers.entries import clock_tick
from workers.state_consumer import CLOCK_MARGIN, StateConsumer, StateSettings

pytestmark = pytest.mark.slow

GROUP = "fairuse-workers"


@pytest.fixture(scope="module")
def detectors():
    return default_detectors(load_model())


@pytest.fixture(scope="module")
def simulation(scored_simulation):
    """Simulated sorted traffic of 80 keys over 3 days, and what the batch command stores for it."""
    return {
        "path": scored_simulation.events_path,
        "frame": scored_simulation.frame,
        "decisions": _decision_keys(scored_simulation.batch.all_decisions()),
        "findings": _counted_findings(_all_findings(scored_simulation.batch)),
    }


def state_worker_builder(redis_client, prefix: str, store, plans, policy, detectors):
    """Return a function that builds state workers on ``prefix`` that checkpoint after every batch."""

    def build(owner: str, partitions: int = 1, models=None, **settings) -> StateConsumer:
        """``models`` is a ``ModelSwitch``, whose detectors then replace ``detectors``."""
        options = {
            "prefix": prefix, "partitions": partitions, "owner": owner, "batch_size": 2000, "block_ms": 10,
            "checkpoint_seconds": 0.0, "close_seconds": 1e9, **settings,
        }
        worker = StateConsumer(
            redis_client, store, plans=plans, policy=policy, detectors=models.detectors() if models else detectors,
            publisher=DecisionPublisher(redis_client, prefix=prefix), settings=StateSettings(**options), models=models,
        )
        worker.ensure_groups()
        return worker

    return build


@pytest.fixture
def make_worker(redis_client, redis_prefix, postgres_url, plans, policy, detectors):
    store = open_store(postgres_url)
    build = state_worker_builder(redis_client, redis_prefix, store, plans, policy, detectors)
    build.store = store
    build.url = postgres_url
    return build


def _append(redis_client, prefix: str, frame, partitions: int = 1) -> None:
    StreamSink(redis_client, f"{prefix}:events", partitions=partitions).send(frame, frame.iloc[:0], ImportReport())


def _drain(*workers: StateConsumer, idle_rounds: int = 3) -> None:
    """Run the workers' rounds in turn until none reads an entry for ``idle_rounds`` rounds, then close days and stop.

    The tails are released before the days are closed, as they would be
    once the partitions had been quiet for the lateness.
    """
    idle = 0
    while idle < idle_rounds:
        entries = sum(worker.process_once().entries for worker in workers)
        idle = idle + 1 if entries == 0 else 0
    for worker in workers:
        worker.release_tails(set(worker.owned))
    for worker in workers:
        worker.close_quiet_keys()
    for worker in workers:
        worker.stop()


def _decision_keys(decisions) -> set[tuple]:
    return {(decision.id, decision.action, tuple(decision.reasons)) for decision in decisions}


def _all_findings(store):
    with Session(store.engine) as session:
        return [_to_finding(row) for row in session.scalars(select(FindingRow))]


def _counted_findings(findings) -> set[str]:
    """Return the ids of the findings that count events, leaving out automation patterns.

    A stream returns each touched subject's pattern finding again with
    every batch, as its bursts grow, so those differ from the batch's by design.
    """
    return {finding_id(finding) for finding in findings if finding.evidence.get("kind") != "pattern"}


def _pending(redis_client, stream: str) -> int:
    return redis_client.xpending(stream, GROUP)["pending"]


# Decisions equal the batch command's ------------------------------------------


def test_one_partition_equals_batch(make_worker, redis_client, redis_prefix, simulation):
    worker = make_worker("w0")
    _append(redis_client, redis_prefix, simulation["frame"])

    _drain(worker)

    assert len(simulation["decisions"]) >= 10
    assert len(simulation["findings"]) >= 100
    assert _decision_keys(make_worker.store.all_decisions()) == simulation["decisions"]
    assert _counted_findings(_all_findings(make_worker.store)) == simulation["findings"]
    assert _pending(redis_client, f"{redis_prefix}:events") == 0
    last_entry = redis_client.xrevrange(f"{redis_prefix}:events", count=1)[0][0]
    assert redis_client.get(worker.applied_key(0)) == last_entry


def test_three_partitions_two_workers_equal_batch(make_worker, redis_client, redis_prefix, simulation):
    first = make_worker("w0", partitions=3)
    second = make_worker("w1", partitions=3)
    _append(redis_client, redis_prefix, simulation["frame"], partitions=3)
    # The first worker takes all three partitions and starts on them; the second joins later and takes one over.
    for _ in range(3):
        first.process_once()

    _drain(first, second)

    lengths = [redis_client.xlen(f"{redis_prefix}:events:{partition}") for partition in range(3)]
    assert all(length > 0 for length in lengths)
    assert sum(lengths) == len(simulation["frame"])
    assert _decision_keys(make_worker.store.all_decisions()) == simulation["decisions"]
    assert _counted_findings(_all_findings(make_worker.store)) == simulation["findings"]
    assert all(_pending(redis_client, f"{redis_prefix}:events:{partition}") == 0 for partition in range(3))


# Events in arrival order ------------------------------------------------------


def _in_arrival_order(frame: pd.DataFrame, lateness: float) -> pd.DataFrame:
    """Return ``frame`` in the order a gateway appends it, at response end, with each latency capped at ``lateness``."""
    arrival = frame["ts"].to_numpy() + np.minimum(frame["latency_ms"].to_numpy() / 1000.0, lateness)
    return frame.iloc[np.argsort(arrival, kind="stable")].reset_index(drop=True)


def _late_events(frame: pd.DataFrame) -> int:
    """Return how many events of ``frame`` come after a later-started event of their subject."""
    newest = frame.groupby(["subject_type", "key_id"])["ts"].cummax()
    return int((frame["ts"] < newest).sum())


def test_arrival_order_equals_batch(make_worker, redis_client, redis_prefix, simulation):
    worker = make_worker("w0", lateness=120.0)
    arrived = _in_arrival_order(simulation["frame"], 120.0)
    _append(redis_client, redis_prefix, arrived)

    _drain(worker)

    assert _late_events(arrived) > 1000
    assert _decision_keys(make_worker.store.all_decisions()) == simulation["decisions"]
    assert _counted_findings(_all_findings(make_worker.store)) == simulation["findings"]


def test_arrival_order_without_lateness_differs(make_worker, redis_client, redis_prefix, simulation):
    """With lateness 0 the same input makes subjects inexact, so the test above compares late events."""
    worker = make_worker("w0", lateness=0.0)
    _append(redis_client, redis_prefix, _in_arrival_order(simulation["frame"], 120.0))
    inexact = 0
    while (outcome := worker.process_once()).entries:
        inexact += outcome.inexact

    assert inexact > 0
    assert len(worker.owned[0].tail) == 0


def test_handover_mid_tail_continues_exactly(make_worker, redis_client, redis_prefix, simulation):
    """A worker stops with events held in its tail; the next owner loads them from the checkpoint and goes on."""
    arrived = _in_arrival_order(simulation["frame"], 120.0)
    half = len(arrived) // 2
    first = make_worker("a", lateness=120.0)
    _append(redis_client, redis_prefix, arrived.iloc[:half])
    while first.process_once().entries:
        pass
    held = len(first.owned[0].tail)
    watermark = first.owned[0].tail.watermark
    first.stop()

    second = make_worker("b", lateness=120.0)
    _append(redis_client, redis_prefix, arrived.iloc[half:])
    second.rebalance()

    assert held > 0
    assert len(second.owned[0].tail) == held
    assert second.owned[0].tail.watermark == watermark
    _drain(second)
    assert _decision_keys(make_worker.store.all_decisions()) == simulation["decisions"]
    assert _counted_findings(_all_findings(make_worker.store)) == simulation["findings"]


def test_quiet_partition_releases_tail(make_worker, redis_client, redis_prefix):
    """Without entries for the lateness in clock time, the held events are applied."""
    now = [0.0]
    worker = make_worker("w0", lateness=30.0)
    worker.clock = lambda: now[0]
    for number in range(5):
        redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(record(number, ts=T0 + number))})
    worker.process_once()
    held = len(worker.owned[0].tail)

    now[0] = 29.0
    worker.process_once()
    still_held = len(worker.owned[0].tail)
    now[0] = 30.0
    worker.process_once()

    assert held == still_held == 5
    assert len(worker.owned[0].tail) == 0
    assert len(worker.owned[0].scorer.ranks) == 1


# Checkpoints, handover, a killed worker ----------------------------------------


def test_lease_handover_continues_state(make_worker, redis_client, redis_prefix, simulation):
    traffic = simulation["frame"]
    half = len(traffic) // 2
    first = make_worker("a")
    _append(redis_client, redis_prefix, traffic.iloc[:half])
    while first.process_once().entries:
        pass
    subjects_seen = len(first.owned[0].scorer.ranks)
    last_id = first.owned[0].last_id
    first.stop()

    second = make_worker("b")
    _append(redis_client, redis_prefix, traffic.iloc[half:])
    taken = second.rebalance()

    assert taken == {0: 0}
    assert second.owned[0].last_id == last_id
    assert len(second.owned[0].scorer.ranks) == subjects_seen
    _drain(second)
    assert _decision_keys(make_worker.store.all_decisions()) == simulation["decisions"]
    assert _counted_findings(_all_findings(make_worker.store)) == simulation["findings"]


def test_killed_worker_replays_pending_once(make_worker, redis_client, redis_prefix, simulation, tmp_path, plans, detectors):
    stream = f"{redis_prefix}:events"
    _append(redis_client, redis_prefix, simulation["frame"])
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "detector.cli", "worker", "--state", "--db", make_worker.url, "--redis", REDIS_URL,
         "--prefix", redis_prefix, "--batch-size", "500", "--checkpoint-seconds", "0.3"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "FAIRUSE_PREFIX": redis_prefix},
    )
    try:
        _wait_until(lambda: redis_client.exists(f"{redis_prefix}:state:0") and _pending(redis_client, stream) > 0
                    and make_worker.store.all_decisions(), process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    checkpoint = load_state(redis_client.get(f"{redis_prefix}:state:0"), detectors, plans)
    pending_ids = [entry["message_id"] for entry in redis_client.xpending_range(stream, GROUP, "-", "+", 10**6)]
    after_checkpoint = [entry_id for entry_id in pending_ids if _id(entry_id) > _id(checkpoint.last_id)]
    delivered = redis_client.xinfo_groups(stream)[0]["entries-read"]
    # Pending entries may be none when a checkpoint acknowledged them all just before the kill. The replay
    # of entries after a checkpoint is forced in test_checkpoint_before_acknowledgement_applied_once.
    assert delivered < len(simulation["frame"]), "the worker finished before it was killed; use more traffic"

    # The killed worker's lease would expire after its TTL; deleting it stands for that wait.
    redis_client.delete(f"{redis_prefix}:lease:0")
    restarted = make_worker("restarted")
    replayed = restarted.rebalance()

    assert replayed == {0: len(after_checkpoint)}
    _drain(restarted)
    assert _decision_keys(make_worker.store.all_decisions()) == simulation["decisions"]
    assert _counted_findings(_all_findings(make_worker.store)) == simulation["findings"]
    assert _pending(redis_client, stream) == 0


def test_checkpoint_before_acknowledgement_applied_once(make_worker, redis_client, redis_prefix, simulation, monkeypatch):
    """A worker that dies after writing a checkpoint and before XACK leaves entries the checkpoint contains."""
    stream = f"{redis_prefix}:events"
    _append(redis_client, redis_prefix, simulation["frame"])
    dying = make_worker("dying", checkpoint_seconds=1e9)
    for _ in range(5):
        dying.process_once()
    monkeypatch.setattr(dying.client, "xack", lambda *arguments: 0)
    dying.checkpoint({0})
    monkeypatch.undo()
    contained = _pending(redis_client, stream)

    redis_client.delete(f"{redis_prefix}:lease:0")
    restarted = make_worker("restarted")
    replayed = restarted.rebalance()

    assert contained == 5 * 2000
    assert replayed == {0: 0}
    assert _pending(redis_client, stream) == 0
    _drain(restarted)
    assert _decision_keys(make_worker.store.all_decisions()) == simulation["decisions"]
    assert _counted_findings(_all_findings(make_worker.store)) == simulation["findings"]


def _wait_until(condition, process, deadline_s: float = 120.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"worker exited with {process.returncode} before the condition held")
        if condition():
            return
        time.sleep(0.02)
    pytest.fail("condition not reached in time")


def _id(entry_id) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence)


def test_stalled_owner_cannot_overwrite_checkpoint(make_worker, redis_client, redis_prefix):
    stalled = make_worker("stalled", checkpoint_seconds=1e9)
    redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(record(1, ts=T0))})
    stalled.process_once()
    # The stalled worker's lease runs out, and another worker takes the partition over.
    redis_client.delete(f"{redis_prefix}:lease:0")
    owner = make_worker("owner")
    owner.rebalance()
    owner.checkpoint({0})
    written = redis_client.get(f"{redis_prefix}:state:0")

    assert stalled.checkpoint({0}) == set()
    assert 0 not in stalled.owned
    assert redis_client.get(f"{redis_prefix}:state:0") == written


def test_entries_read_after_lease_applied_by_owner(make_worker, redis_client, redis_prefix):
    stream = f"{redis_prefix}:events"
    owner = make_worker("owner")
    owner.rebalance()
    for number in range(5):
        redis_client.xadd(stream, {"event": orjson.dumps(record(number, ts=T0 + number))})
    # A previous owner, past its lease, reads the entries as p0 and dies before its checkpoint.
    redis_client.xreadgroup(GROUP, "p0", {stream: ">"}, count=10)

    outcome = owner.process_once()

    assert outcome.events == 5
    assert owner.owned[0].last_id == redis_client.xrange(stream)[-1][0]
    assert _pending(redis_client, stream) == 5
    owner.checkpoint({0})
    assert _pending(redis_client, stream) == 0


def test_checkpoint_key_expires_after_retention(make_worker, redis_client, redis_prefix):
    worker = make_worker("w0")
    redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(record(1, ts=T0))})

    worker.process_once()

    ttl = redis_client.ttl(f"{redis_prefix}:state:0")
    assert ttl > 7 * 86400
    assert ttl <= worker.settings.checkpoint_ttl_seconds


# Each write takes ``write`` seconds of the worker's clock. The first is due 10 s after the take-over. A 2-s write
# spaces the next one 2 / 0.05 = 40 s away, so it waits past the round 30 s later. A 10-s write would space it
# 200 s away, but the cap of 60 s lets the round 65 s later write it.
@pytest.mark.parametrize(
    ("write", "advances", "saves"),
    [(2.0, [0.0, 10.0, 30.0, 15.0], [1012.0, 1059.0]), (10.0, [0.0, 10.0, 50.0, 15.0], [1020.0, 1095.0])],
)
def test_slow_checkpoint_written_less_often(make_worker, redis_client, redis_prefix, monkeypatch, write, advances, saves):
    clock = [1000.0]
    worker = make_worker("w0", checkpoint_seconds=1.0, checkpoint_share=0.05, checkpoint_max_seconds=60.0)
    worker.clock = lambda: clock[0]
    save = worker.checkpoints.save
    written = []

    def slow_save(*arguments, **options):
        clock[0] += write
        written.append(clock[0])
        return save(*arguments, **options)

    monkeypatch.setattr(worker.checkpoints, "save", slow_save)
    for number, advance in enumerate(advances):
        clock[0] += advance
        redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(record(number, ts=T0 + number))})
        worker.process_once()

    assert written == saves
    assert _pending(redis_client, f"{redis_prefix}:events") == 0


def test_tick_closed_day_event_counted_late(make_worker, redis_client, redis_prefix):
    worker = make_worker("w0")
    day_start = T0 // 86400 * 86400
    stream = f"{redis_prefix}:events"
    for number in range(20):
        redis_client.xadd(stream, {"event": orjson.dumps(record(number, ts=day_start + 23 * 3600 + number))})
    worker.process_once()
    redis_client.xadd(stream, clock_tick(day_start + 86400 + CLOCK_MARGIN + 60))
    worker.process_once()

    # A request that started at 23:58 of the closed day, appended after the tick.
    redis_client.xadd(stream, {"event": orjson.dumps(record(99, ts=day_start + 23 * 3600 + 3480))})
    late = worker.process_once()
    redis_client.xadd(stream, {"event": orjson.dumps(record(100, ts=day_start + 86400 + 7200))})
    next_day = worker.process_once()

    assert worker.owned[0].clock_closed == day_start + 86400 + 60
    assert late.beyond_lateness == 1
    assert next_day.beyond_lateness == 0


def test_missing_checkpoint_logged_with_partition(make_worker, caplog):
    worker = make_worker("w0", partitions=2)

    with caplog.at_level(logging.WARNING, logger="workers.state_consumer"):
        worker.rebalance()

    messages = [entry.getMessage() for entry in caplog.records]
    assert any(message.startswith("partition 0: no checkpoint at") for message in messages)
    assert any(message.startswith("partition 1: no checkpoint at") for message in messages)


# Repeats and malformed entries -------------------------------------------------


def test_repeated_request_in_horizon_dropped(make_worker, redis_client, redis_prefix):
    worker = make_worker("w0")
    records = [record(number, ts=T0 + number * 4.0) for number in range(50)]
    for item in records:
        redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(item)})
    first = worker.process_once()

    # The gateway sends the last ten requests again, within the 10-minute horizon.
    for item in records[-10:]:
        redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(item)})
    again = worker.process_once()

    assert first.events == 50
    assert again.entries == 10
    assert again.events == 0
    assert again.duplicates == 10


def test_repeats_survive_a_checkpoint(make_worker, redis_client, redis_prefix):
    first = make_worker("a")
    item = record(1, ts=T0)
    redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(item)})
    first.process_once()
    first.stop()

    second = make_worker("b")
    redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(item)})
    outcome = second.process_once()

    assert outcome.entries == 1
    assert outcome.duplicates == 1


def test_repeats_forget_ids_past_horizon():
    repeats = RepeatedRequests(horizon=600.0, max_runs=1)
    old = _requests(["old"], [T0])
    repeats.first_seen(old)

    repeats.first_seen(_requests(["new-1"], [T0 + 700.0]))
    repeats.first_seen(_requests(["new-2"], [T0 + 701.0]))

    assert repeats.first_seen(_requests(["old"], [T0 + 702.0])).tolist() == [True]
    assert repeats.first_seen(_requests(["new-2"], [T0 + 703.0])).tolist() == [False]


def test_repeats_within_one_batch_keep_first():
    repeats = RepeatedRequests()

    assert repeats.first_seen(_requests(["a", "b", "a"], [T0, T0 + 1, T0 + 2])).tolist() == [True, True, False]


def _requests(ids, times):
    return pd.DataFrame({"request_id": pd.Series(ids, dtype="str"), "ts": np.asarray(times, dtype=float)})


def test_malformed_entry_dead_lettered_not_blocking(make_worker, redis_client, redis_prefix):
    worker = make_worker("w0")
    stream = f"{redis_prefix}:events"
    redis_client.xadd(stream, {"event": b"{not json"})
    redis_client.xadd(stream, {"other": b"field"})
    redis_client.xadd(stream, {"event": orjson.dumps(record(1, ts=T0))})

    outcome = worker.process_once()

    assert outcome.entries == 3
    assert outcome.events == 1
    assert outcome.dead == 2
    reasons = [fields[b"reason"].decode() for _, fields in redis_client.xrange(f"{redis_prefix}:events:dead")]
    assert any("invalid JSON" in reason for reason in reasons)
    assert any("missing or empty 'event' field" in reason for reason in reasons)
    assert _pending(redis_client, stream) == 0


# Checkpoint format ---------------------------------------------------------------


def test_checkpoint_round_trip_keeps_current_detectors(make_worker, redis_client, redis_prefix, simulation, plans, detectors):
    worker = make_worker("w0")
    _append(redis_client, redis_prefix, simulation["frame"].iloc[:5000])
    worker.process_once()
    state = worker.owned[0]

    data = dump_state(state, detectors, plans)
    loaded = load_state(data, detectors, plans)

    assert data[:4] == MAGIC
    assert b"IsolationForest" not in data
    assert loaded.last_id == state.last_id
    assert loaded.newest == state.newest
    assert len(loaded.repeats) == len(state.repeats) > 0
    assert loaded.scorer.detectors == detectors
    assert all(ours is theirs for ours, theirs in zip(loaded.scorer.detectors, detectors))
    assert loaded.scorer.states[0][0].detector is detectors[0]
    assert loaded.scorer.plans is plans


class _RunsCommand:
    def __reduce__(self):
        return (os.system, ("echo checkpoint ran a command",))


def test_checkpoint_with_foreign_global_rejected(plans, detectors):
    data = MAGIC + bytes([1]) + pickle.dumps(_RunsCommand(), protocol=5)

    with pytest.raises(CheckpointError, match=r"names the global (posix|nt|os)\.system"):
        load_state(data, detectors, plans)


def test_checkpoint_of_other_version_rejected(plans, detectors):
    with pytest.raises(CheckpointError, match="format version 9"):
        load_state(MAGIC + bytes([9]) + pickle.dumps({}), detectors, plans)


def test_foreign_checkpoint_starts_empty(make_worker, redis_client, redis_prefix, caplog):
    redis_client.set(f"{redis_prefix}:state:0", MAGIC + bytes([1]) + pickle.dumps(_RunsCommand(), protocol=5))
    worker = make_worker("w0")

    with caplog.at_level(logging.ERROR, logger="workers.state_consumer"):
        worker.rebalance()

    assert worker.owned[0].last_id is None
    assert any("not loaded, starting with empty state" in entry.getMessage() for entry in caplog.records)


# Gateway side --------------------------------------------------------------------


def test_gateway_partition_matches_worker():
    accounts = ["acct-1", "", "  ", "账户-7", "acct-1"]
    keys = ["key-1", "key-2", "key-3", "key-4", "key-9"]

    expected = partition_of(accounts, keys, 5).tolist()

    assert [partition_of_event(account, key, 5) for account, key in zip(accounts, keys)] == expected
    assert expected[0] == expected[4]


def test_one_partition_keeps_stream_name():
    assert partition_stream("fairuse:events", 0, 1) == "fairuse:events"
    assert event_stream("fairuse:events", "acct-1", "key-1", 1) == "fairuse:events"
    assert event_stream("fairuse:events", "acct-1", "key-1", 4) == f"fairuse:events:{partition_of_event('acct-1', 'key-1', 4)}"


def test_stream_sink_appends_by_partition(redis_client, redis_prefix, simulation):
    frame = simulation["frame"].iloc[:3000]

    _append(redis_client, redis_prefix, frame, partitions=3)

    for partition in range(3):
        entries = redis_client.xrange(f"{redis_prefix}:events:{partition}")
        events = [orjson.loads(fields[b"event"]) for _, fields in entries]
        assert events
        assert all(partition_of_event(event["account_id"], event["key_id"], 3) == partition for event in events)
    assert not redis_client.exists(f"{redis_prefix}:events")

