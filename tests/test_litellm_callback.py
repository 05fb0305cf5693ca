"""The LiteLLM callback with LiteLLM's own mock responses: no network, real Redis."""

import os
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
import orjson  # noqa: E402
import pytest  # noqa: E402

from detector.readers import validate_records  # noqa: E402
from fairuse_gateway.litellm_callback import FairuseLogger  # noqa: E402


@pytest.fixture
def callback(redis_client, redis_prefix):
    logger = FairuseLogger(stream=f"{redis_prefix}:events", client=redis_client, credits_per_usd=2.0)
    previous = litellm.callbacks
    litellm.callbacks = [logger]
    yield logger
    litellm.callbacks = previous
    # LiteLLM copies a callback into its success and failure lists on first use, and the copy outlives
    # litellm.callbacks: left there, it would log later tests' calls into this test's stream after its cleanup.
    litellm.logging_callback_manager.remove_callback_from_all_lists(logger)


def _sent(redis_client, stream, expected=1):
    # LiteLLM runs success callbacks on a background thread after returning.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and redis_client.xlen(stream) < expected:
        time.sleep(0.02)
    return [orjson.loads(fields[b"event"]) for _, fields in redis_client.xrange(stream)]


def test_completion_sends_contract_event(callback, redis_client):
    litellm.completion(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "secret prompt text"}], mock_response="hello",
        metadata={"user_api_key_hash": "hashed-key", "user_api_key_user_id": "acct-9",
                  "user_api_key_team_alias": "coding", "requester_ip_address": "203.0.113.4"},
    )

    events = _sent(redis_client, callback.stream)

    assert len(events) == 1
    event = events[0]
    assert event["key_id"] == "hashed-key"
    assert event["account_id"] == "acct-9"
    assert event["plan"] == "coding"
    assert event["endpoint"] == "/v1/chat/completions"
    assert event["prompt_tokens"] > 0
    assert event["status"] == 200
    assert "secret prompt text" not in orjson.dumps(event).decode()


def test_event_passes_contract_validation(callback, redis_client):
    litellm.completion(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], mock_response="hello",
        metadata={"user_api_key_hash": "hashed-key", "requester_ip_address": "203.0.113.4"},
    )

    frame, rejects = validate_records(_sent(redis_client, callback.stream), "litellm")

    assert rejects == []
    assert len(frame) == 1
    assert frame.loc[0, "ip"] == "203.0.113.4"


def test_cost_converted_to_credits(callback, redis_client):
    response = litellm.completion(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], mock_response="hello",
        metadata={"user_api_key_hash": "k"},
    )

    event = _sent(redis_client, callback.stream)[0]

    assert event["cost"] == pytest.approx(2.0 * response._hidden_params["response_cost"])


def test_unreachable_redis_does_not_fail_call(redis_prefix):
    logger = FairuseLogger("redis://127.0.0.1:1/0", stream=f"{redis_prefix}:events")
    previous = litellm.callbacks
    litellm.callbacks = [logger]
    try:
        response = litellm.completion(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], mock_response="hello",
        )
    finally:
        litellm.callbacks = previous

    assert response.choices[0].message.content == "hello"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and logger.failures == 0:
        time.sleep(0.02)
    assert logger.failures == 1


def test_partitioned_callback_appends_to_account_partition(callback, redis_client):
    from fairuse_gateway.partitions import partition_of_event

    callback.partitions = 3
    litellm.completion(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], mock_response="hello",
        metadata={"user_api_key_hash": "hashed-key", "user_api_key_user_id": "acct-9"},
    )

    partition = partition_of_event("acct-9", "hashed-key", 3)
    events = _sent(redis_client, f"{callback.stream}:{partition}")

    assert [event["account_id"] for event in events] == ["acct-9"]
    assert not redis_client.exists(callback.stream)


def test_callback_rejects_zero_partitions(redis_client):
    with pytest.raises(ValueError, match="partitions must be at least 1, not 0"):
        FairuseLogger(client=redis_client, partitions=0)
