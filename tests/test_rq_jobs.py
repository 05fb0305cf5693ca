"""The RQ jobs, run by a real RQ worker against real Redis."""

import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from rq import Queue, SimpleWorker

from detector.decisions import Decision
from detector.model_registry import load_model
from detector.shadow import is_shadow
from detector.store.model_assignments import SHADOW, ModelAssignments
from detector.readers import validate_records
from detector.store import open_store
from workers.jobs import consume_stream, republish_decisions, rescore_quiet_keys
from tests.factories import record
from workers.window import EventWindows

pytestmark = pytest.mark.slow


def _event(number, start=None):
    # Events of the last twenty minutes, so the decisions they cause are in force now.
    start = start if start is not None else time.time() - 1200
    return record(number, ts=start + number * 2.0, prompt_hash="same")


@pytest.fixture
def environment(monkeypatch, redis_prefix, sqlite_url):
    monkeypatch.setenv("FAIRUSE_PREFIX", redis_prefix)
    monkeypatch.setenv("FAIRUSE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("FAIRUSE_NO_MODEL", "1")
    return redis_prefix, sqlite_url


def _run_consume_job(redis_client, prefix):
    """Enqueue a 3-second consume job, run it in a burst worker, and return it refreshed."""
    queue = Queue(f"{prefix}-queue", connection=redis_client)
    job = queue.enqueue(consume_stream, seconds=3.0)
    SimpleWorker([queue], connection=redis_client).work(burst=True)
    job.refresh()
    return job


def test_consume_job_scores_stream(environment, redis_client, monkeypatch):
    prefix, database = environment
    monkeypatch.setenv("FAIRUSE_STATE", "0")
    start = time.time() - 1200
    for number in range(600):
        redis_client.xadd(f"{prefix}:events", {"event": orjson.dumps(_event(number, start))})
    job = _run_consume_job(redis_client, prefix)

    assert job.is_finished, job.latest_result()
    assert job.return_value()["events"] == 600
    decisions = open_store(database).all_decisions()
    assert any("automation" in decision.reasons for decision in decisions)
    assert redis_client.exists(f"{prefix}:decision:key:key-1")


def test_consume_job_with_state_hands_partitions_back(environment, redis_client, monkeypatch):
    from fairuse_gateway.partitions import event_stream

    prefix, database = environment
    # FAIRUSE_STATE is not set: the state worker is the default.
    monkeypatch.setenv("FAIRUSE_PARTITIONS", "2")
    start = time.time() - 1200
    for number in range(600):
        event = _event(number, start) if number % 2 else record(number, key="key-4", ts=start + number * 2.0)
        stream = event_stream(f"{prefix}:events", event["account_id"], event["key_id"], 2)
        redis_client.xadd(stream, {"event": orjson.dumps(event)})
    job = _run_consume_job(redis_client, prefix)

    assert job.is_finished, job.latest_result()
    assert job.return_value()["events"] == 600
    assert any("automation" in decision.reasons for decision in open_store(database).all_decisions())
    for partition in range(2):
        assert redis_client.xlen(f"{prefix}:events:{partition}") > 0
        assert redis_client.xpending(f"{prefix}:events:{partition}", "fairuse-workers")["pending"] == 0
        assert redis_client.exists(f"{prefix}:state:{partition}")
        assert not redis_client.exists(f"{prefix}:lease:{partition}")


def test_republish_job_restores_keys(environment, redis_client):
    prefix, database = environment
    now = datetime.now(UTC)
    decision = Decision(
        id="in-force", subject_type="key", subject="key-7", action="suspend", reasons=["abnormal_cost"], score=90.0,
        evidence={}, detected_at=now - timedelta(minutes=1), created_at=now, expires_at=now + timedelta(hours=1),
        origin="abnormal_cost/1+policy/default-1",
    )
    open_store(database).save_decisions([decision])
    queue = Queue(f"{prefix}-queue", connection=redis_client)

    job = queue.enqueue(republish_decisions)
    SimpleWorker([queue], connection=redis_client).work(burst=True)

    job.refresh()
    assert job.is_finished
    assert job.return_value() == 1
    assert redis_client.exists(f"{prefix}:decision:key:key-7")


def _rescore_quiet_flood(redis_client, prefix):
    """Store a window in which, two days ago, one key flooded with one prompt and never came back; rescore it."""
    start = time.time() - 2 * 86400
    frame, rejects = validate_records([_event(number, start) for number in range(3000)], "test")
    assert rejects == []
    EventWindows(redis_client, prefix=prefix).extend(frame)
    queue = Queue(f"{prefix}-queue", connection=redis_client)

    job = queue.enqueue(rescore_quiet_keys)
    SimpleWorker([queue], connection=redis_client).work(burst=True)
    job.refresh()
    return job


def test_rescore_job_ticks_state_partitions(environment, redis_client, monkeypatch):
    prefix, _ = environment
    queue = Queue(f"{prefix}-queue", connection=redis_client)
    before = queue.enqueue(rescore_quiet_keys)
    SimpleWorker([queue], connection=redis_client).work(burst=True)
    monkeypatch.setenv("FAIRUSE_PARTITIONS", "2")
    _run_consume_job(redis_client, prefix)

    job = queue.enqueue(rescore_quiet_keys)
    SimpleWorker([queue], connection=redis_client).work(burst=True)

    before.refresh()
    job.refresh()
    assert before.return_value()["clock_ticks"] == 0
    assert job.return_value()["clock_ticks"] == 2
    for partition in range(2):
        (_, fields), = redis_client.xrevrange(f"{prefix}:events:{partition}", count=1)
        assert abs(float(fields[b"clock"]) - time.time()) < 60


def test_rescore_job_scores_quiet_key_days(environment, redis_client, monkeypatch):
    prefix, database = environment
    monkeypatch.delenv("FAIRUSE_NO_MODEL")

    job = _rescore_quiet_flood(redis_client, prefix)

    assert job.is_finished, job.latest_result()
    assert job.return_value()["subjects"] == 1
    assert job.return_value()["findings"] >= 1
    stored = open_store(database).all_decisions()
    assert all(decision.subject == "key-1" for decision in stored)


# Reviews every model finding, so the shadow's decisions show that it ran.
ANY_ANOMALY_POLICY = """
[policy]
name = "any-anomaly"
version = "1"

[[rules]]
name = "review model findings"
reason = "anomaly"
min_score = 0
min_impact = 0
action = "review"
duration = "1d"
"""


def test_rescore_job_runs_shadow_model(environment, redis_client, monkeypatch):
    prefix, database = environment
    monkeypatch.delenv("FAIRUSE_NO_MODEL")
    store = open_store(database)
    ModelAssignments(store.engine).record(SHADOW, load_model().version, policy_name="any-anomaly.toml",
                                          policy_toml=ANY_ANOMALY_POLICY)

    job = _rescore_quiet_flood(redis_client, prefix)

    assert job.is_finished, job.latest_result()
    assert job.return_value()["shadow_decisions"] >= 1
    again = _rescore_quiet_flood(redis_client, prefix)
    # The second run finds the same days and stores nothing new, and counts nothing new.
    assert again.return_value()["findings"] == job.return_value()["findings"]
    assert again.return_value()["decisions"] == 0
    assert again.return_value()["shadow_decisions"] == 0
    stored = store.all_decisions()
    shadowed = [decision for decision in stored if is_shadow(decision)]
    assert shadowed
    assert all(decision.simulated for decision in shadowed)
    published = redis_client.get(f"{prefix}:decision:key:key-1")
    published_ids = {entry["id"] for entry in orjson.loads(published)["active"]} if published else set()
    assert not published_ids & {decision.id for decision in shadowed}
