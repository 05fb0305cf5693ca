"""The HTTP decisions API over real SQLite and Redis, through FastAPI's test client."""

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from detector.decisions import Decision
from detector.store import open_store
from detector.store.gateways import GatewayError, GatewayRegistry
from detector.store.repository import FEED_OVERLAP
from fairuse_gateway import DecisionClient
from tests.conftest import REDIS_URL
from workers.http_api import create_app
from workers.publish import DecisionPublisher, subject_key


def _decision(action="suspend", *, subject="key-1", seconds=3600.0, ident=None, created=None, scope="all",
              limit_rpm=30):
    now = datetime.now(UTC)
    return Decision(
        id=ident or f"{action}-{subject}-{seconds}", subject_type="key", subject=subject, action=action,
        reasons=["automation"], score=80.0, evidence={"automation": {"load_vs_plan": 5.0}},
        detected_at=now - timedelta(seconds=5), created_at=created or now,
        expires_at=now + timedelta(seconds=seconds), origin="automation/1+policy/default-1",
        limit_rpm=limit_rpm if action == "throttle" else None, scope=scope,
    )


@pytest.fixture
def setup(sqlite_url, redis_client, redis_prefix):
    store = open_store(sqlite_url)
    api_key = GatewayRegistry(store.engine).add("edge-1")
    app = create_app(store, DecisionClient(REDIS_URL, prefix=redis_prefix, cache_seconds=0.0))
    publisher = DecisionPublisher(redis_client, prefix=redis_prefix)
    return TestClient(app), {"X-Api-Key": api_key}, store, publisher


def test_check_without_key_is_401(setup):
    client, _, _, _ = setup

    response = client.get("/v1/decisions", params={"key_id": "key-1"})

    assert response.status_code == 401
    assert "X-Api-Key" in response.json()["detail"]


def test_check_with_wrong_key_is_401(setup):
    client, _, _, _ = setup

    response = client.get("/v1/decisions", params={"key_id": "key-1"}, headers={"X-Api-Key": "fug_wrong"})

    assert response.status_code == 401


def test_check_returns_published_suspension(setup):
    client, headers, store, publisher = setup
    decision = _decision()
    store.save_decisions([decision])
    publisher.publish([decision])

    body = client.get("/v1/decisions", params={"key_id": "key-1", "ip": "203.0.113.1"}, headers=headers).json()

    assert body["action"] == "suspend"
    assert body["decision_id"] == decision.id
    assert body["reasons"] == ["automation"]


def test_check_unknown_subject_allows(setup):
    client, headers, _, _ = setup

    assert client.get("/v1/decisions", params={"key_id": "nobody"}, headers=headers).json()["action"] == "allow"


def test_check_fails_open_on_malformed_value(setup, redis_client, redis_prefix):
    client, headers, _, _ = setup
    redis_client.set(subject_key(redis_prefix, "key", "key-1"), b"not json")

    response = client.get("/v1/decisions", params={"key_id": "key-1"}, headers=headers)

    assert response.status_code == 200
    assert response.json()["action"] == "allow"
    assert response.json()["fail_open"] is True


def test_startup_snapshot_lists_each_subject_once(setup):
    client, headers, store, _ = setup
    store.save_decisions([_decision("suspend"), _decision("throttle", seconds=7200), _decision("review", subject="key-2")])

    body = client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers).json()

    subjects = [(item["subject_type"], item["subject"]) for item in body["new"]]
    assert sorted(subjects) == [("key", "key-1"), ("key", "key-2")]
    assert {item["subject"]: item["action"] for item in body["new"]} == {"key-1": "suspend", "key-2": "review"}
    assert body["deleted"] == []


def test_snapshot_carries_stricter_image_throttle(setup):
    client, headers, store, _ = setup
    images = _decision("throttle", ident="images-2rpm", scope="images", limit_rpm=2)
    store.save_decisions([_decision("throttle", ident="all-30rpm", seconds=7200), images,
                          _decision("throttle", subject="key-2", ident="only-all")])

    body = client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers).json()

    by_subject = {item["subject"]: item for item in body["new"]}
    assert len(body["new"]) == 2
    assert by_subject["key-1"]["id"] == "all-30rpm"
    assert by_subject["key-1"]["images"]["id"] == "images-2rpm"
    assert by_subject["key-1"]["images"]["limit_rpm"] == 2
    assert by_subject["key-2"]["images"] is None


def test_looser_image_throttle_not_attached(setup):
    client, headers, store, _ = setup
    store.save_decisions([_decision("throttle", ident="all-5rpm", limit_rpm=5),
                          _decision("throttle", ident="images-20rpm", scope="images", limit_rpm=20)])

    body = client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers).json()

    assert [item["id"] for item in body["new"]] == ["all-5rpm"]
    assert body["new"][0]["images"] is None


def test_change_carries_stricter_image_throttle(setup):
    client, headers, store, _ = setup
    store.save_decisions([_decision("throttle", ident="images-2rpm", scope="images", limit_rpm=2)])
    client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers)
    time.sleep(0.01)
    store.save_decisions([_decision("throttle", ident="all-30rpm", created=datetime.now(UTC))])

    body = client.get("/v1/decisions/stream", headers=headers).json()

    item = next(item for item in body["new"] if item["id"] == "all-30rpm")
    assert item["images"]["id"] == "images-2rpm"


def test_image_suspension_keeps_throttle_of_all_endpoints(setup):
    client, headers, store, _ = setup
    store.save_decisions([_decision("throttle", ident="all-30rpm", limit_rpm=30),
                          _decision("suspend", ident="images-suspended", scope="images")])

    body = client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers).json()

    assert [item["id"] for item in body["new"]] == ["all-30rpm"]
    assert body["new"][0]["images"]["id"] == "images-suspended"
    assert body["new"][0]["images"]["action"] == "suspend"


def test_image_suspension_listed_over_review(setup):
    client, headers, store, _ = setup
    store.save_decisions([_decision("review", ident="all-review"),
                          _decision("suspend", ident="images-suspended", scope="images")])

    body = client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers).json()

    assert [item["id"] for item in body["new"]] == ["images-suspended"]


def test_looser_change_sends_what_snapshot_sends(setup):
    client, headers, store, _ = setup
    # Stored before the feed's look-back, so the next pull does not list it as a change.
    earlier = datetime.now(UTC) - FEED_OVERLAP - timedelta(minutes=1)
    store.save_decisions([replace(_decision("throttle", ident="all-5rpm", limit_rpm=5), detected_at=earlier)],
                         stored_at=earlier)
    client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers)
    time.sleep(0.01)
    store.save_decisions([_decision("throttle", ident="images-20rpm", scope="images", limit_rpm=20,
                                    created=datetime.now(UTC))])

    change = client.get("/v1/decisions/stream", headers=headers).json()
    snapshot = client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers).json()

    # A gateway that keeps one entry per subject must not swap the 5 rpm throttle of all endpoints
    # for a looser one of image endpoints only.
    assert [item["id"] for item in change["new"]] == ["all-5rpm"]
    assert change["new"] == snapshot["new"]


def test_stream_returns_only_changes_after_startup(setup):
    client, headers, store, _ = setup
    store.save_decisions([_decision("suspend")])
    client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers)
    time.sleep(0.01)  # created strictly after the startup pull, and before the next one
    store.save_decisions([_decision("throttle", subject="key-3", created=datetime.now(UTC))])

    body = client.get("/v1/decisions/stream", headers=headers).json()

    # key-1 may come again: a pull looks FEED_OVERLAP back, and gateways apply decisions by id.
    assert "key-3" in [item["subject"] for item in body["new"]]
    assert set(item["subject"] for item in body["new"]) <= {"key-1", "key-3"}


def test_stream_since_survives_shared_key(setup):
    client, headers, store, _ = setup
    own = client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers).json()
    time.sleep(0.01)
    store.save_decisions([_decision("throttle", subject="key-3", created=datetime.now(UTC))])
    # Another process with the same key pulled later, moving the key's cursor past the overlap.
    GatewayRegistry(store.engine).mark_pulled("edge-1", datetime.now(UTC) + FEED_OVERLAP + timedelta(seconds=5))

    body = client.get("/v1/decisions/stream", params={"since": own["pulled_at"]}, headers=headers).json()

    assert [item["subject"] for item in body["new"]] == ["key-3"]
    assert body["pulled_at"] > own["pulled_at"]


def test_stream_since_without_time_zone_is_422(setup):
    client, headers, _, _ = setup

    response = client.get("/v1/decisions/stream", params={"since": "2026-01-01T00:00:00"}, headers=headers)

    assert response.status_code == 422


def test_feed_lists_decision_committed_just_after_a_pull(setup):
    _, _, store, _ = setup
    store.save_decisions([_decision("throttle", subject="late")])
    stored_at = store.all_decisions()[0].created_at

    # A pull that happened after the insert was stamped but before it committed set the cursor past it.
    new, _ = store.changes_between(stored_at + timedelta(seconds=1), datetime.now(UTC))

    assert [decision.subject for decision in new] == ["late"]


def test_feed_skips_decisions_before_overlap(setup):
    _, _, store, _ = setup
    store.save_decisions([_decision("throttle", subject="old")])

    later = datetime.now(UTC) + FEED_OVERLAP + timedelta(seconds=5)
    new, _ = store.changes_between(later - timedelta(seconds=1), later)

    assert new == []


def test_future_decision_applies_once_stored(setup):
    client, headers, store, publisher = setup
    now = datetime.now(UTC)
    ahead = replace(_decision("suspend", subject="ahead"), detected_at=now + timedelta(seconds=120))
    store.save_decisions([ahead])

    publisher.publish([ahead])
    body = client.get("/v1/decisions", params={"key_id": "ahead"}, headers=headers).json()
    snapshot = client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers).json()

    assert body["action"] == "suspend"
    assert [item["subject"] for item in snapshot["new"]] == ["ahead"]


def test_shorter_decision_ending_resends_longer(setup):
    client, headers, store, _ = setup
    short = _decision("suspend", seconds=0.5, ident="short")
    long = _decision("throttle", seconds=3600, ident="long")
    store.save_decisions([short, long])
    first = client.get("/v1/decisions/stream", params={"startup": "true"}, headers=headers).json()
    assert [item["id"] for item in first["new"]] == ["short"]

    time.sleep(0.6)
    body = client.get("/v1/decisions/stream", headers=headers).json()

    assert [item["id"] for item in body["deleted"]] == ["short"]
    assert [item["id"] for item in body["new"]] == ["long"]


def test_revoked_gateway_rejected(setup):
    client, headers, store, _ = setup

    GatewayRegistry(store.engine).revoke("edge-1")

    assert client.get("/v1/decisions", params={"key_id": "key-1"}, headers=headers).status_code == 401


def test_gateway_key_stored_hashed(setup, sqlite_url):
    _, headers, store, _ = setup

    with store.engine.connect() as connection:
        rows = connection.exec_driver_sql("select key_hash from gateways").fetchall()

    assert headers["X-Api-Key"] not in str(rows)
    assert len(rows[0][0]) == 64


def test_duplicate_gateway_name_rejected(setup):
    _, _, store, _ = setup

    with pytest.raises(GatewayError, match="already has an active key"):
        GatewayRegistry(store.engine).add("edge-1")


def test_revoked_gateway_name_gets_new_key(setup):
    client, old_headers, store, _ = setup
    registry = GatewayRegistry(store.engine)
    registry.revoke("edge-1")

    new_key = registry.add("edge-1")

    assert client.get("/v1/decisions", params={"key_id": "k"}, headers={"X-Api-Key": new_key}).status_code == 200
    assert client.get("/v1/decisions", params={"key_id": "k"}, headers=old_headers).status_code == 401


def test_openapi_served(setup):
    client, _, _, _ = setup

    spec = client.get("/openapi.json").json()

    assert "/v1/decisions" in spec["paths"]
    assert "/v1/decisions/stream" in spec["paths"]
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-Api-Key"
    assert "401" in spec["paths"]["/v1/decisions"]["get"]["responses"]


def test_check_without_subject_is_422(setup):
    client, headers, _, _ = setup

    response = client.get("/v1/decisions", headers=headers)

    assert response.status_code == 422
    assert "key_id" in response.json()["detail"]
