"""The state worker's hourly activity rows against those of the batch command and the window worker."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from detector.features import prepare_events
from detector.gateway_import import ImportReport, StreamSink
from detector.model_registry import load_model
from detector.pipeline import default_detectors
from detector.review.activity import ActivityLog, hourly_activity
from detector.state.chunk import Chunk
from detector.store import open_store
from detector.store.review_models import ActivityRow
from tests.factories import DAY, HOUR, T0, events, frame, record
from tests.test_state_consumer import state_worker_builder
from workers.checkpoint import dump_state, load_state
from workers.consumer import StreamConsumer, StreamSettings
from workers.publish import DecisionPublisher
from workers.state_activity import KEPT_HOURS, HourlyActivity
from workers.window import EventWindows

BATCH = 2000
KEY = ["subject_type", "subject", "hour"]


@pytest.fixture(scope="module")
def detectors():
    return default_detectors(load_model())


@pytest.fixture(scope="module")
def simulation(scored_simulation):
    """Simulated traffic of 80 keys over 3 days in stream order, and the activity rows the batch command stores for it."""
    return {"frame": scored_simulation.frame, "rows": _stored_rows(scored_simulation.batch.engine)}


@pytest.fixture
def make_worker(redis_client, redis_prefix, postgres_url, plans, policy, detectors):
    store = open_store(postgres_url)
    build = state_worker_builder(redis_client, redis_prefix, store, plans, policy, detectors)
    build.store = store
    return build


def _stored_rows(engine) -> pd.DataFrame:
    with Session(engine) as session:
        rows = session.scalars(select(ActivityRow)).all()
    table = pd.DataFrame([
        {"subject_type": row.subject_type, "subject": row.subject, "hour": pd.Timestamp(row.hour).tz_convert("UTC"),
         "requests": row.requests, "cost": row.cost, "networks": row.networks, "countries": row.countries,
         "user_agents": row.user_agents, "gaps": tuple(row.gaps)}
        for row in rows
    ], columns=[*KEY, "requests", "cost", "networks", "countries", "user_agents", "gaps"])
    return table.sort_values(KEY).reset_index(drop=True)


def _assert_same_rows(written: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(expected) > 0
    assert written[KEY].equals(expected[KEY])
    for column in ("requests", "networks", "countries", "user_agents", "gaps"):
        assert written[column].tolist() == expected[column].tolist(), column
    # A split hour's cost is the sum of its batches' sums (see workers.state_activity).
    assert written["cost"].to_numpy() == pytest.approx(expected["cost"].to_numpy(), rel=1e-12)


def _append(redis_client, prefix: str, traffic: pd.DataFrame) -> None:
    StreamSink(redis_client, f"{prefix}:events", partitions=1).send(traffic, traffic.iloc[:0], ImportReport())


def _run_until_idle(worker) -> None:
    """Process every entry, then apply the events held for the lateness, as a partition quiet for that long does."""
    while worker.process_once().entries:
        pass
    worker.release_tails(set(worker.owned))


def _split_hours(traffic: pd.DataFrame, rows: pd.DataFrame, batch_size: int) -> int:
    """Return how many of the charted (subject, hour) pairs have events in more than one micro-batch."""
    batch = pd.Series(np.arange(len(traffic)) // batch_size)
    hour = pd.to_datetime(traffic["ts"] // 3600 * 3600, unit="s", utc=True)
    batches = batch.groupby([traffic["subject_type"], traffic["key_id"], hour]).nunique()
    charted = pd.MultiIndex.from_frame(rows[KEY])
    return int((batches.reindex(charted) > 1).sum())


# Against the batch command, on simulated traffic ------------------------------------------------


@pytest.mark.slow
def test_state_rows_equal_batch(make_worker, redis_client, redis_prefix, simulation):
    _append(redis_client, redis_prefix, simulation["frame"])
    worker = make_worker("a")
    _run_until_idle(worker)
    worker.close_quiet_keys()
    worker.stop()

    written = _stored_rows(make_worker.store.engine)
    _assert_same_rows(written, simulation["rows"])
    assert _split_hours(simulation["frame"], written, BATCH) > 0
    # Subjects acted on after their first hour: the rows before their first decision are backfilled.
    first_decision = {}
    for decision in make_worker.store.all_decisions():
        subject = (decision.subject_type, decision.subject)
        first_decision[subject] = min(first_decision.get(subject, decision.detected_at), decision.detected_at)
    first_hour = written.groupby(["subject_type", "subject"])["hour"].min()
    backfilled = [subject for subject, hour in first_hour.items() if hour < pd.Timestamp(first_decision[subject]) - pd.Timedelta(hours=2)]
    assert backfilled


@pytest.mark.slow
def test_state_rows_survive_handover_mid_hour(make_worker, redis_client, redis_prefix, simulation):
    traffic = simulation["frame"]
    # Split at an event in the middle of an hour of a charted subject, so that hour is in both workers' batches.
    charted = set(zip(simulation["rows"]["subject_type"], simulation["rows"]["subject"]))
    middle = next(
        position for position in range(len(traffic) // 2, len(traffic))
        if (traffic["subject_type"].iloc[position], traffic["key_id"].iloc[position]) in charted
        and 600 < traffic["ts"].iloc[position] % 3600 < 3000
    )
    first = make_worker("a")
    _append(redis_client, redis_prefix, traffic.iloc[:middle])
    _run_until_idle(first)
    first.stop()

    second = make_worker("b")
    _append(redis_client, redis_prefix, traffic.iloc[middle:])
    second.rebalance()
    assert len(second.owned[0].activity) > 0
    _run_until_idle(second)
    second.close_quiet_keys()
    second.stop()

    _assert_same_rows(_stored_rows(make_worker.store.engine), simulation["rows"])


@pytest.mark.slow
def test_state_rows_after_replay_from_checkpoint(make_worker, redis_client, redis_prefix, simulation):
    traffic = simulation["frame"]
    third = len(traffic) // 3
    # No checkpoint is due during the test, so the one written by hand is what a new owner loads.
    first = make_worker("a", checkpoint_seconds=1e9)
    _append(redis_client, redis_prefix, traffic.iloc[:third])
    _run_until_idle(first)
    first.checkpoint({0})
    _append(redis_client, redis_prefix, traffic.iloc[third : 2 * third])
    _run_until_idle(first)
    # The first worker dies here: its rows of the second third are stored, its state of them is not.
    redis_client.delete(f"{redis_prefix}:lease:0")

    second = make_worker("b")
    _append(redis_client, redis_prefix, traffic.iloc[2 * third :])
    replayed = second.rebalance()
    assert replayed[0] > 0
    _run_until_idle(second)
    second.close_quiet_keys()
    second.stop()

    _assert_same_rows(_stored_rows(make_worker.store.engine), simulation["rows"])


# Against the window worker, on a small input ---------------------------------------------------


def _bot_records() -> list[dict]:
    """Two quiet hours, then a clock-like flood that the default policy throttles, with one request sent twice."""
    quiet = [record(number, key="key-1", ts=T0 + 60 + number * 600.0, user_agent=f"agent-{number % 3}") for number in range(12)]
    flood = [record(100 + number, key="key-1", ts=T0 + 2 * HOUR + number * 4.0, ip=f"198.51.{number % 4}.7",
                    country="DE" if number % 2 else "FR") for number in range(900)]
    other = [record(5000 + number, key="key-2", ts=T0 + number * 300.0) for number in range(40)]
    records = sorted([*quiet, *flood, *other], key=lambda event: event["ts"])
    repeated = next(position for position, event in enumerate(records) if event["request_id"] == "req-key-1-500")
    records.insert(repeated + 3, dict(records[repeated]))
    return records


@pytest.mark.slow
def test_state_rows_equal_window_worker(make_worker, redis_client, redis_prefix, sqlite_url, plans, policy):
    records = _bot_records()
    window_store = open_store(sqlite_url)
    window_prefix = f"{redis_prefix}:window"
    window = StreamConsumer(
        redis_client, window_store, plans=plans, policy=policy, detectors=default_detectors(None),
        windows=EventWindows(redis_client, prefix=window_prefix),
        publisher=DecisionPublisher(redis_client, prefix=window_prefix),
        settings=StreamSettings(stream=f"{window_prefix}:events", group="workers", dead_letter=f"{window_prefix}:dead",
                                block_ms=10, batch_size=30),
    )
    window.ensure_group()
    build = state_worker_builder(redis_client, redis_prefix, make_worker.store, plans, policy, default_detectors(None))
    state = build("a", batch_size=30)
    for event in records:
        redis_client.xadd(window.settings.stream, {"event": orjson.dumps(event)})
        redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(event)})
    while window.process_once().entries:
        pass
    _run_until_idle(state)
    state.stop()

    written = _stored_rows(make_worker.store.engine)
    expected = _stored_rows(window_store.engine)
    assert window_store.all_decisions()
    _assert_same_rows(written, expected)
    # The quiet hours came before the first decision, and the repeated request is counted once.
    assert written["subject"].tolist().count("key-1") == 3
    assert written["requests"].sum() == 912


@pytest.mark.slow
def test_open_case_subject_charted(make_worker, redis_client, redis_prefix):
    from detector.review.actions import StaffActions

    StaffActions(make_worker.store.engine, DecisionPublisher(redis_client, prefix=redis_prefix)).open_case(
        "key", "key-2", staff="alice", comment="reported by support")
    for event in _bot_records():
        if event["key_id"] == "key-2":
            redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(event)})
    worker = make_worker("a", batch_size=7)
    _run_until_idle(worker)
    worker.stop()

    written = _stored_rows(make_worker.store.engine)
    assert set(written["subject"]) == {"key-2"}
    assert written["requests"].sum() == 40


# HourlyActivity alone ----------------------------------------------------------------------------


def _mixed_traffic() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    times = np.sort(T0 + rng.uniform(0, 5 * HOUR, 400))
    return frame(
        events("k", times, ip=[f"203.0.{number % 5}.9" for number in range(400)],
               user_agent=[["a", "b", "", None][number % 4] for number in range(400)],
               country=[["DE", "", "FR"][number % 3] for number in range(400)],
               cost=rng.uniform(0, 0.1, 400).tolist()),
        events("k", [T0 + 10.0, T0 + 10.0, T0 + 7 * HOUR]),
        events("other", np.sort(T0 + rng.uniform(0, 5 * HOUR, 50)), subject_type="ip", ip="192.0.2.5"),
    )


@pytest.mark.parametrize("size", [1, 7, 64, 1000])
def test_split_chunks_equal_one_pass(plans, size):
    traffic = _mixed_traffic()
    activity = HourlyActivity()
    for start in range(0, len(traffic), size):
        activity.add(Chunk(traffic.iloc[start : start + size].reset_index(drop=True), plans))
    prepared = prepare_events(traffic, plans)
    subjects = set(zip(prepared.subjects["subject_type"], prepared.subjects["subject"]))

    written = activity.rows(subjects, np.empty(0, np.int64)).sort_values(KEY).reset_index(drop=True)
    expected = hourly_activity(prepared, subjects).sort_values(KEY).reset_index(drop=True)

    written["hour"] = pd.to_datetime(written["hour"], utc=True)
    expected["hour"] = pd.to_datetime(expected["hour"], utc=True)
    written["gaps"] = written["gaps"].map(tuple)
    expected["gaps"] = expected["gaps"].map(tuple)
    _assert_same_rows(written, expected)


def test_charted_subject_gets_hours_from_touched(plans):
    activity = HourlyActivity()
    activity.add(Chunk(events("k", [T0 + 100, T0 + HOUR + 100, T0 + 2 * HOUR + 100]), plans))
    first = activity.rows({("key", "k")}, np.empty(0, np.int64))
    touched = activity.add(Chunk(events("k", [T0 + HOUR + 200, T0 + 3 * HOUR]), plans))
    again = activity.rows({("key", "k")}, touched)

    assert len(first) == 3
    # From the earliest touched hour on, with the untouched hour in between, so a span replace loses nothing.
    assert [hour.hour for hour in again["hour"]] == [1, 2, 3]
    assert again["requests"].tolist() == [2, 1, 1]


def test_old_hours_and_idle_subjects_pruned(plans):
    activity = HourlyActivity()
    activity.add(Chunk(events("idle", [T0, T0 + 60], ip=["192.0.2.1", "192.0.2.200"]), plans))
    activity.add(Chunk(events("busy", [T0 + 30]), plans))
    activity.rows({("key", "idle")}, np.empty(0, np.int64))
    activity.add(Chunk(events("busy", [T0 + 7 * DAY + 2 * HOUR]), plans))

    assert ("key", "idle") not in activity.ids
    assert ("key", "idle") not in activity.charted
    assert activity.free_ids == [0]
    assert len(activity) == 1
    assert (activity.row_key & 0xFFFFFFFF).min() >= (T0 + 7 * DAY + 2 * HOUR) // 3600 - KEPT_HOURS + 1
    assert len(activity.value_keys) == 3
    # A new subject takes the free id, and its first gap is not measured from the idle subject's requests.
    activity.add(Chunk(events("new", [T0 + 7 * DAY + 2 * HOUR + 5]), plans))
    assert activity.ids[("key", "new")] == 0
    assert activity.gaps.sum() == 0


def test_checkpoint_keeps_activity(plans, detectors, make_worker):
    worker = make_worker("a")
    worker.rebalance()
    state = worker.owned[0]
    state.activity.add(Chunk(events("k", [T0, T0 + 5, T0 + HOUR]), plans))
    state.activity.charted.add(("key", "k"))

    loaded = load_state(dump_state(state, detectors, plans), detectors, plans)

    assert loaded.activity.row_key.tolist() == state.activity.row_key.tolist()
    assert loaded.activity.value_keys.tolist() == state.activity.value_keys.tolist()
    assert loaded.activity.charted == {("key", "k")}
    worker.stop()


def test_store_rows_replaces_span(sqlite_url, plans):
    store = open_store(sqlite_url)
    log = ActivityLog(store.engine)
    activity = HourlyActivity()
    activity.add(Chunk(events("k", [T0 + 100, T0 + HOUR + 100]), plans))
    log.store_rows(activity.rows({("key", "k")}, np.empty(0, np.int64)))
    touched = activity.add(Chunk(events("k", [T0 + HOUR + 200]), plans))
    log.store_rows(activity.rows({("key", "k")}, touched))

    stored = _stored_rows(store.engine)
    assert stored["requests"].tolist() == [1, 2]
