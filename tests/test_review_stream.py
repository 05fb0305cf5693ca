"""Staff review on the stream path: the staff allowlist and the hourly activity, through StreamConsumer."""

from datetime import timedelta

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from detector.pipeline import default_detectors
from detector.review.actions import StaffActions
from detector.store import open_store
from detector.store.gateways import GatewayRegistry
from detector.store.review_models import ActivityRow
from fairuse_gateway import DecisionClient
from tests.conftest import REDIS_URL
from tests.factories import T0, record
from workers.consumer import StreamConsumer, StreamSettings
from workers.http_api import create_app
from workers.publish import DecisionPublisher
from workers.window import EventWindows

pytestmark = pytest.mark.slow


@pytest.fixture
def store(sqlite_url):
    return open_store(sqlite_url)


@pytest.fixture
def actions(store, redis_client, redis_prefix):
    return StaffActions(store.engine, DecisionPublisher(redis_client, prefix=redis_prefix))


@pytest.fixture
def consumer(store, redis_client, redis_prefix, plans, policy):
    built = StreamConsumer(
        redis_client, store, plans=plans, policy=policy, detectors=default_detectors(None),
        windows=EventWindows(redis_client, prefix=redis_prefix),
        publisher=DecisionPublisher(redis_client, prefix=redis_prefix),
        settings=StreamSettings(stream=f"{redis_prefix}:events", group="workers", dead_letter=f"{redis_prefix}:dead",
                                block_ms=10, batch_size=300),
    )
    built.ensure_group()
    return built


def _send_bot_traffic(redis_client, consumer) -> None:
    """Send 900 requests 4 s apart from key-1, a clock-like flood the default policy throttles."""
    for number in range(900):
        event = record(number, key="key-1", ts=T0 + number * 4.0)
        redis_client.xadd(consumer.settings.stream, {"event": orjson.dumps(event)})
    while consumer.process_once().entries:
        pass


def test_stream_throttles_without_allowlist(consumer, store, redis_client):
    _send_bot_traffic(redis_client, consumer)

    assert "throttle" in {decision.action for decision in store.all_decisions()}


def test_stream_honours_staff_allowlist(consumer, store, actions, redis_client):
    actions.add_allowlist("key", "key-1", staff="alice", duration=timedelta(days=30), comment="load test partner")

    _send_bot_traffic(redis_client, consumer)

    actions_taken = {decision.action for decision in store.all_decisions()}
    assert "throttle" not in actions_taken
    assert "suspend" not in actions_taken


def test_stream_keeps_hourly_activity(consumer, store, redis_client):
    _send_bot_traffic(redis_client, consumer)

    with Session(store.engine) as session:
        hours = session.scalar(select(func.count()).select_from(ActivityRow).where(ActivityRow.subject == "key-1"))
        requests = session.scalar(select(func.sum(ActivityRow.requests)))
    # 900 requests 4 s apart span one hour (T0 is on the hour).
    assert hours == 1
    assert requests == 900


def test_first_decision_writes_earlier_hours(consumer, store, redis_client):
    # Two quiet hours, scored on their own without a decision, then a flood that is throttled.
    for number in range(12):
        event = record(number, key="key-1", ts=T0 + 60 + number * 600.0)
        redis_client.xadd(consumer.settings.stream, {"event": orjson.dumps(event)})
    while consumer.process_once().entries:
        pass
    assert not store.all_decisions()

    for number in range(900):
        event = record(100 + number, key="key-1", ts=T0 + 2 * 3600 + number * 4.0)
        redis_client.xadd(consumer.settings.stream, {"event": orjson.dumps(event)})
    while consumer.process_once().entries:
        pass

    with Session(store.engine) as session:
        hours = session.scalar(select(func.count()).select_from(ActivityRow).where(ActivityRow.subject == "key-1"))
        requests = session.scalar(select(func.sum(ActivityRow.requests)))
    assert store.all_decisions()
    assert hours == 3
    assert requests == 912


def test_lift_reported_to_http_gateways(store, actions, redis_prefix):
    api_key = GatewayRegistry(store.engine).add("edge-1")
    client = TestClient(create_app(store, DecisionClient(REDIS_URL, prefix=redis_prefix, cache_seconds=0.0)))
    headers = {"X-Api-Key": api_key}
    decision = actions.add_decision("key", "key-7", "suspend", staff="alice", duration=timedelta(hours=2),
                                    comment="card fraud")
    startup = client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers).json()
    assert [item["id"] for item in startup["new"]] == [decision.id]

    actions.lift(decision.id, staff="bob", comment="cleared by support")

    changes = client.get("/v1/decisions/stream", headers=headers).json()
    assert [item["id"] for item in changes["deleted"]] == [decision.id]
    assert changes["new"] == []
    assert client.get("/v1/decisions", params={"key_id": "key-7"}, headers=headers).json()["action"] == "allow"
