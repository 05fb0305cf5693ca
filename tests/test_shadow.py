"""Shadow runs: stored as simulated, compared with enforced decisions, never published."""

import time

import orjson
import pytest

from detector.batch import BatchOptions, run_batch
from detector.model_switch import ModelSwitch, policy_from_text
from detector.plans import load_plans
from detector.shadow import compare_with_enforced, is_shadow
from detector.store import open_store
from detector.store.model_assignments import SHADOW, ModelAssignments
from tests.factories import record
from tests.model_helpers import small_history
from workers.consumer import StreamConsumer, StreamSettings
from workers.publish import DecisionPublisher
from workers.window import EventWindows

pytestmark = pytest.mark.slow

# Suspends any automated load: far stricter than the shipped policy.
STRICT_POLICY = """
[policy]
name = "strict"
version = "9"

[[rules]]
name = "suspend any automated load"
reason = "automation"
kind = "load"
min_score = 0
min_impact = 0
action = "suspend"
duration = "1d"
"""

# Acts on model findings only, so a flood without a model gets no enforced decision.
QUIET_POLICY = """
[policy]
name = "quiet"
version = "1"

[[rules]]
name = "model review"
reason = "anomaly"
min_score = 99
min_impact = 100
action = "review"
duration = "1d"
"""


def _flood(count=600, key="key-1"):
    start = time.time() - 1200
    return [record(number, key=key, ts=start + number * 2.0, prompt_hash="same") for number in range(count)]


def _consumer(redis_client, prefix, store, policy):
    models = ModelSwitch(store, policy=policy, use_model=False)
    return StreamConsumer(
        redis_client, store, plans=load_plans(), policy=policy,
        detectors=models.detectors(), windows=EventWindows(redis_client, prefix=prefix),
        publisher=DecisionPublisher(redis_client, prefix=prefix),
        settings=StreamSettings(stream=f"{prefix}:events", dead_letter=f"{prefix}:events:dead", consumer="test"),
        models=models,
    )


def test_shadow_decisions_never_published(sqlite_url, redis_client, redis_prefix):
    store = open_store(sqlite_url)
    ModelAssignments(store.engine).record(SHADOW, None, policy_name="strict.toml", policy_toml=STRICT_POLICY)
    consumer = _consumer(redis_client, redis_prefix, store, policy_from_text(QUIET_POLICY, "quiet.toml"))
    for event in _flood():
        redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(event)})

    consumer.ensure_group()
    outcome = consumer.process_once()

    stored = store.all_decisions()
    assert outcome.events == 600
    assert outcome.decisions == 0
    assert stored, "the shadow policy should have suspended the flooding key"
    assert all(is_shadow(decision) for decision in stored)
    assert {decision.action for decision in stored} == {"suspend"}
    assert list(redis_client.scan_iter(match=f"{redis_prefix}:decision:*")) == []
    assert redis_client.xlen(f"{redis_prefix}:decisions") == 0

    # Republishing from the store, as after a Redis restart, skips them too.
    assert DecisionPublisher(redis_client, prefix=redis_prefix).republish(store) == 0
    assert list(redis_client.scan_iter(match=f"{redis_prefix}:decision:*")) == []


def test_shadow_beside_enforced_publishes_enforced_only(sqlite_url, redis_client, redis_prefix, policy):
    store = open_store(sqlite_url)
    ModelAssignments(store.engine).record(SHADOW, None, policy_name="strict.toml", policy_toml=STRICT_POLICY)
    consumer = _consumer(redis_client, redis_prefix, store, policy)
    for event in _flood():
        redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(event)})

    consumer.ensure_group()
    consumer.process_once()

    stored = store.all_decisions()
    shadow_ids = {decision.id for decision in stored if is_shadow(decision)}
    enforced_ids = {decision.id for decision in stored if not decision.simulated}
    published = orjson.loads(redis_client.get(f"{redis_prefix}:decision:key:key-1"))["active"]
    changes = [orjson.loads(fields[b"change"]) for _, fields in redis_client.xrange(f"{redis_prefix}:decisions")]
    assert shadow_ids and enforced_ids
    assert {entry["id"] for entry in published} <= enforced_ids
    assert {entry["id"] for entry in changes} <= enforced_ids
    assert {entry["action"] for entry in published} == {"throttle"}


def test_batch_runs_shadow_and_compares(tmp_path, sqlite_url):
    simulation, _ = small_history(tmp_path / "sim", keys=80, days=2, seed=6)
    store = open_store(sqlite_url)
    ModelAssignments(store.engine).record(SHADOW, None, policy_name="strict.toml", policy_toml=STRICT_POLICY)

    report = run_batch(BatchOptions(paths=[simulation.events_path], database_url=sqlite_url, use_model=False))

    stored = store.all_decisions()
    shadowed = [decision for decision in stored if is_shadow(decision)]
    assert shadowed
    assert all(decision.simulated for decision in shadowed)
    assert not any(is_shadow(decision) for decision in report.decisions)
    assert report.shadow == f"no-model+strict-9: {len(shadowed):,} simulated decisions on this input"

    diffs = compare_with_enforced(stored, 7 * 86400)
    assert list(diffs) == ["no-model+strict-9"]
    diff = diffs["no-model+strict-9"]
    assert any(group.action == "suspend" and group.reason == "automation" for group in diff.new)
    assert all(group.examples for group in diff.new)


def test_batch_without_shadow_reports_none(tmp_path, sqlite_url):
    simulation, _ = small_history(tmp_path / "sim", keys=20, days=1, seed=6)

    report = run_batch(BatchOptions(paths=[simulation.events_path], database_url=sqlite_url, use_model=False))

    assert report.shadow is None


def test_simulate_run_ignores_shadow_decisions(tmp_path, sqlite_url):
    simulation, _ = small_history(tmp_path / "sim", keys=80, days=2, seed=6)
    store = open_store(sqlite_url)
    ModelAssignments(store.engine).record(SHADOW, None, policy_name="strict.toml", policy_toml=STRICT_POLICY)
    run_batch(BatchOptions(paths=[simulation.events_path], database_url=sqlite_url, use_model=False))
    ModelAssignments(store.engine).record(SHADOW, None)

    report = run_batch(BatchOptions(paths=[simulation.events_path], database_url=sqlite_url, use_model=False, simulate=True))

    assert report.decisions
    assert all(decision.simulated for decision in report.decisions)
    assert not any(is_shadow(decision) for decision in report.decisions)
    assert any("automation" in decision.reasons for decision in report.decisions)


def test_compare_counts_since_shadow_started(tmp_path, sqlite_url):
    from datetime import UTC, datetime

    simulation, _ = small_history(tmp_path / "sim", keys=80, days=2, seed=6)
    run_batch(BatchOptions(paths=[simulation.events_path], database_url=sqlite_url, use_model=False))
    started = datetime.now(UTC)

    stored = open_store(sqlite_url).all_decisions()

    assert stored
    assert compare_with_enforced(stored, 7 * 86400, started) == {}
