"""Publishing decisions to real Redis and reading them back through the gateway client."""

import socket
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis

from detector.decisions import Decision
from detector.store import open_store
from fairuse_gateway import DecisionClient
from tests.conftest import REDIS_URL
from workers.publish import DecisionPublisher, subject_key


def _decision(action="suspend", *, subject="key-1", seconds=3600.0, scope="all", ident=None, simulated=False, started=-5.0):
    now = datetime.now(UTC)
    return Decision(
        id=ident or f"{action}-{subject}-{seconds}",
        subject_type="key", subject=subject, action=action, reasons=["abnormal_cost"], score=90.0,
        evidence={}, detected_at=now + timedelta(seconds=started), created_at=now,
        expires_at=now + timedelta(seconds=seconds), origin="abnormal_cost/1+policy/default-1",
        simulated=simulated, scope=scope, limit_rpm=10 if action == "throttle" else None,
    )


@pytest.fixture
def publisher(redis_client, redis_prefix):
    return DecisionPublisher(redis_client, prefix=redis_prefix)


@pytest.fixture
def gateway(redis_prefix):
    return DecisionClient(REDIS_URL, prefix=redis_prefix, cache_seconds=0.0)


def test_published_suspension_read_by_gateway(publisher, gateway):
    publisher.publish([_decision("suspend")])

    verdict = gateway.check(key_id="key-1", account_id="acct-1", ip="203.0.113.5")

    assert verdict.action == "suspend"
    assert verdict.subject_type == "key"
    assert verdict.reasons == ("abnormal_cost",)
    assert verdict.expires_at == pytest.approx(time.time() + 3600, abs=5)


def test_unknown_subject_allowed(gateway):
    assert gateway.check(key_id="nobody").action == "allow"


def test_review_allows_request(publisher, gateway):
    publisher.publish([_decision("review")])

    assert gateway.check(key_id="key-1").action == "allow"


def test_throttle_carries_limit_and_scope(publisher, gateway):
    publisher.publish([_decision("throttle", scope="images")])

    verdict = gateway.check(key_id="key-1")

    assert verdict.action == "throttle"
    assert verdict.limit_rpm == 10
    assert verdict.scope == "images"


def test_shorter_overlap_ending_keeps_longer(publisher, gateway, redis_client, redis_prefix):
    publisher.publish([_decision("suspend", seconds=1.0), _decision("throttle", seconds=60.0)])

    assert gateway.check(key_id="key-1").action == "suspend"
    time.sleep(1.2)

    assert gateway.check(key_id="key-1").action == "throttle"
    ttl_ms = redis_client.pttl(subject_key(redis_prefix, "key", "key-1"))
    assert 55_000 < ttl_ms <= 60_000


def test_key_expires_with_last_decision(publisher, redis_client, redis_prefix):
    publisher.publish([_decision("throttle", seconds=30.0), _decision("suspend", seconds=10.0)])

    ttl_ms = redis_client.pttl(subject_key(redis_prefix, "key", "key-1"))

    assert 25_000 < ttl_ms <= 30_000


def test_counters_never_without_ttl(publisher, redis_client, redis_prefix):
    publisher.publish([_decision("suspend", subject=f"key-{index}") for index in range(20)])

    keys = list(redis_client.scan_iter(match=f"{redis_prefix}:decision:*"))

    assert len(keys) == 20
    assert all(redis_client.pttl(key) > 0 for key in keys)


def test_simulated_and_ended_not_published(publisher, gateway):
    published = publisher.publish([_decision(simulated=True), _decision("throttle", seconds=-1.0, started=-60)])

    assert published == 0
    assert gateway.check(key_id="key-1").action == "allow"


def test_lifting_one_decision_keeps_other(publisher, gateway):
    suspension = _decision("suspend")
    publisher.publish([suspension, _decision("throttle", seconds=7200)])

    publisher.delete([suspension])

    assert gateway.check(key_id="key-1").action == "throttle"


def test_change_stream_records_new_and_deleted(publisher, redis_client):
    decision = _decision("suspend")
    publisher.publish([decision])
    publisher.delete([decision])

    entries = redis_client.xrange(publisher.change_stream)
    changes = [orjson.loads(fields[b"change"]) for _, fields in entries]

    assert [change["kind"] for change in changes] == ["new", "deleted"]
    assert changes[0]["id"] == decision.id
    assert changes[0]["subject"] == "key-1"


def test_publishing_twice_lists_decision_once(publisher, redis_client, redis_prefix):
    decision = _decision("suspend")
    publisher.publish([decision])
    publisher.publish([decision])

    value = orjson.loads(redis_client.get(subject_key(redis_prefix, "key", "key-1")))

    assert [entry["id"] for entry in value["active"]] == [decision.id]


def test_republish_after_redis_lost_data(publisher, gateway, redis_client, redis_prefix, sqlite_url):
    store = open_store(sqlite_url)
    decision = _decision("suspend")
    store.save_decisions([decision])
    publisher.publish([decision])
    redis_client.delete(*redis_client.scan_iter(match=f"{redis_prefix}:*"))
    assert gateway.check(key_id="key-1").action == "allow"

    publisher.republish(store)

    assert gateway.check(key_id="key-1").action == "suspend"


def test_cache_serves_for_at_most_cache_seconds(publisher, redis_prefix):
    client = DecisionClient(REDIS_URL, prefix=redis_prefix, cache_seconds=0.5)
    assert client.check(key_id="key-1").action == "allow"

    publisher.publish([_decision("suspend")])
    cached = client.check(key_id="key-1").action
    time.sleep(0.6)

    assert cached == "allow"
    assert client.check(key_id="key-1").action == "suspend"


def test_unreachable_redis_fails_open_and_counts():
    client = DecisionClient("redis://127.0.0.1:1/0", timeout=0.05)

    verdict = client.check(key_id="key-1")

    assert verdict.action == "allow"
    assert verdict.fail_open is True
    assert client.failures == 1


def test_fail_closed_raises():
    client = DecisionClient("redis://127.0.0.1:1/0", timeout=0.05, fail_open=False)

    with pytest.raises(redis.ConnectionError):
        client.check(key_id="key-1")


def test_strongest_across_key_account_ip(publisher, gateway):
    account = replace(_decision("suspend", subject="acct-9"), subject_type="account", id="acct-suspend")
    publisher.publish([_decision("throttle"), account])

    verdict = gateway.check(key_id="key-1", account_id="acct-9")

    assert verdict.action == "suspend"
    assert verdict.subject_type == "account"


def test_stricter_throttle_wins(publisher, gateway):
    light = replace(_decision("throttle", seconds=7200), id="light")
    hard = replace(_decision("throttle", seconds=600), id="hard", limit_rpm=5)
    publisher.publish([light, hard])

    verdict = gateway.check(key_id="key-1")

    assert verdict.limit_rpm == 5


@pytest.mark.parametrize("spelling", ["::ffff:198.51.100.7", "::FFFF:c633:6407"])
def test_ipv4_mapped_address_finds_the_ipv4_decision(publisher, gateway, spelling):
    publisher.publish([replace(_decision("throttle"), subject_type="ip", subject="198.51.100.7")])

    assert gateway.check(ip=spelling).action == "throttle"


def test_ipv6_address_found_in_any_spelling(publisher, gateway):
    publisher.publish([replace(_decision("suspend"), subject_type="ip", subject="2001:db8::1")])

    assert gateway.check(ip="2001:DB8:0:0:0:0:0:1").action == "suspend"


def test_ipv6_zone_id_finds_the_decision(publisher, gateway):
    publisher.publish([replace(_decision("suspend"), subject_type="ip", subject="fe80::1")])

    assert gateway.check(ip="fe80::1%eth0").action == "suspend"


def test_image_request_gets_the_lower_image_limit(publisher, gateway):
    everything = replace(_decision("throttle"), id="all", limit_rpm=60)
    images = replace(_decision("throttle", scope="images"), id="images", limit_rpm=1)
    publisher.publish([everything, images])

    image_verdict = gateway.check(key_id="key-1", endpoint="/v1/images/generations")
    chat_verdict = gateway.check(key_id="key-1", endpoint="/v1/chat/completions")

    assert (image_verdict.limit_rpm, image_verdict.decision_id) == (1, "images")
    assert (chat_verdict.limit_rpm, chat_verdict.decision_id) == (60, "all")


def test_chat_request_ignores_an_image_only_throttle(publisher, gateway):
    publisher.publish([_decision("throttle", scope="images")])

    assert gateway.check(key_id="key-1", endpoint="/v1/chat/completions").action == "allow"
    assert gateway.check(key_id="key-1", endpoint="/v1/images/edits").action == "throttle"


@pytest.mark.parametrize("value", [
    b"not json", b'{"x": 1}', b"[]", b'{"active": null}', b'"active"',
    b'{"active": [{"action": "suspend"}]}',
    b'{"active": [{"id": "a", "action": "suspend", "scope": "all", "limit_rpm": null, "reasons": [],'
    b' "detected_ms": "0", "expires_ms": 1e20}]}',
])
def test_malformed_value_fails_open(redis_client, redis_prefix, gateway, value):
    redis_client.set(subject_key(redis_prefix, "key", "key-1"), value)

    verdict = gateway.check(key_id="key-1")

    assert verdict.action == "allow"
    assert verdict.fail_open is True
    assert gateway.failures == 1


def test_malformed_value_keeps_other_subjects(publisher, redis_client, redis_prefix, gateway):
    account = replace(_decision("suspend", subject="acct-9"), subject_type="account", id="acct-suspend")
    publisher.publish([account])
    redis_client.set(subject_key(redis_prefix, "key", "key-1"), b"not json")

    verdict = gateway.check(key_id="key-1", account_id="acct-9")

    assert verdict.action == "suspend"
    assert verdict.subject == "acct-9"
    assert gateway.failures == 1


def test_malformed_entry_keeps_other_entries(publisher, redis_client, redis_prefix, gateway):
    publisher.publish([_decision("throttle")])
    key = subject_key(redis_prefix, "key", "key-1")
    value = orjson.loads(redis_client.get(key))
    value["active"].insert(0, {"id": "broken", "action": "suspend"})
    redis_client.set(key, orjson.dumps(value))

    assert gateway.check(key_id="key-1").action == "throttle"


def _loopback_server(handle) -> socket.socket:
    """Start a server on 127.0.0.1 that passes each connection it accepts to ``handle``, in a thread; return it."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener


@pytest.fixture
def error_replying_redis():
    """A loopback server that replies to every command with the MASTERDOWN error of a replica cut off from its master."""
    reply = b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n"

    def serve(connection):
        with connection:
            while connection.recv(65536):
                connection.sendall(reply)

    listener = _loopback_server(serve)
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()


def test_redis_error_reply_fails_open(error_replying_redis):
    client = DecisionClient(error_replying_redis, timeout=0.5)

    verdict = client.check(key_id="key-1")

    assert verdict.action == "allow"
    assert verdict.fail_open is True
    assert client.failures == 1


@pytest.mark.parametrize("endpoint", [
    "/v1/images/generations/", "/v1/images/generations?size=1024x1024", "//v1/images/generations",
    "/v1//images/edits", "/v1/images/variations#x",
])
def test_image_decision_covers_path_spellings(publisher, gateway, endpoint):
    publisher.publish([_decision("suspend", scope="images")])

    assert gateway.check(key_id="key-1", endpoint=endpoint).action == "suspend"


@pytest.mark.parametrize("value", [b"not json", b'{"active": null}', b'{"active": [{"action": "suspend"}]}'])
def test_publish_replaces_malformed_value(publisher, redis_client, redis_prefix, gateway, value):
    redis_client.set(subject_key(redis_prefix, "key", "key-1"), value)

    publisher.publish([_decision("suspend")])

    assert gateway.check(key_id="key-1").action == "suspend"
    assert gateway.failures == 0


def test_publish_replaces_key_of_another_type(publisher, redis_client, redis_prefix, gateway):
    redis_client.hset(subject_key(redis_prefix, "key", "key-1"), "field", "value")

    publisher.publish([_decision("suspend")])

    assert gateway.check(key_id="key-1").action == "suspend"


def test_fail_closed_raises_on_malformed_value(redis_client, redis_prefix):
    redis_client.set(subject_key(redis_prefix, "key", "key-1"), b"not json")
    client = DecisionClient(REDIS_URL, prefix=redis_prefix, cache_seconds=0.0, fail_open=False)

    with pytest.raises(ValueError, match="invalid decision value"):
        client.check(key_id="key-1")


class CuttingProxy:
    """A loopback proxy to Redis that drops each connection partway through its first script call.

    It forwards the client's bytes until a write holding EVALSHA, passes the
    first ``keep`` bytes of that write, then closes both sides: a connection
    lost while a publish is on its way.
    """

    def __init__(self, target: tuple[str, int], keep: int = 600) -> None:
        self.target = target
        self.keep = keep
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
            threading.Thread(target=self._forward_until_cut, args=(client, upstream), daemon=True).start()

    def _forward_until_cut(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                if b"EVALSHA" in data:
                    upstream.sendall(data[: data.index(b"EVALSHA") + self.keep])
                    break
                upstream.sendall(data)
        finally:
            for side in (client, upstream):
                side.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()


def test_connection_lost_mid_publish_leaves_nothing(redis_client, redis_prefix):
    address = redis_client.connection_pool.connection_kwargs
    proxy = CuttingProxy((address.get("host", "127.0.0.1"), address.get("port", 6379)))
    through_proxy = redis.Redis(host="127.0.0.1", port=proxy.port, db=address.get("db", 0), socket_timeout=5)
    publisher = DecisionPublisher(through_proxy, prefix=redis_prefix)
    decisions = [_decision("suspend", subject=f"key-{number}") for number in range(200)]

    try:
        with pytest.raises(redis.ConnectionError):
            publisher.publish(decisions)
    finally:
        proxy.close()

    # Redis applied none of the subjects: a gateway reads the change whole or not at all.
    assert list(redis_client.scan_iter(match=f"{redis_prefix}:decision:*")) == []
    assert redis_client.xlen(f"{redis_prefix}:decisions") == 0


def test_lift_and_new_decision_published_together(publisher, gateway):
    old = _decision("throttle", ident="old-throttle")
    publisher.publish([old])
    new = _decision("suspend", ident="new-suspend")

    published, withdrawn = publisher.apply([new], [replace(old, expires_at=datetime.now(UTC))])

    assert (published, withdrawn) == (1, 1)
    assert gateway.check(key_id="key-1").decision_id == "new-suspend"


@pytest.fixture
def silent_redis():
    """A loopback server that accepts connections and never replies, counting them."""
    accepted: list[socket.socket] = []
    listener = _loopback_server(accepted.append)
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0", accepted
    listener.close()
    for connection in accepted:
        connection.close()


class StepClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_unreachable_redis_asked_once_per_pause(silent_redis):
    url, accepted = silent_redis
    clock = StepClock()
    client = DecisionClient(url, timeout=0.05, retry_after=1.0, clock=clock)

    verdicts = [client.check(key_id=f"key-{number}") for number in range(20)]
    connections_in_pause = len(accepted)
    clock.now += 1.5
    client.check(key_id="key-1")

    assert all(verdict.fail_open for verdict in verdicts)
    assert client.failures == 21
    assert connections_in_pause == 1
    assert len(accepted) == 2



def test_pause_ends_under_steady_checks(silent_redis):
    url, accepted = silent_redis
    clock = StepClock()
    client = DecisionClient(url, timeout=0.05, retry_after=1.0, clock=clock)

    # Checks every 0.4 s, more often than retry_after: the pause must still end 1 s after the failure.
    for _ in range(4):
        client.check(key_id="key-1")
        clock.now += 0.4

    assert clock.now == pytest.approx(101.6)
    assert len(accepted) == 2


class FailingRedis:
    """Passes MGET to a real Redis, or raises TimeoutError while ``down`` is set."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.down = False

    def mget(self, keys):
        if self.down:
            raise redis.TimeoutError("Timeout reading from the test server")
        return self.client.mget(keys)


def test_outage_keeps_cached_decision(publisher, redis_client, redis_prefix):
    publisher.publish([_decision("suspend")])
    failing = FailingRedis(redis_client)
    clock = StepClock()
    client = DecisionClient(prefix=redis_prefix, cache_seconds=60.0, retry_after=1.0, client=failing, clock=clock)
    assert client.check(key_id="key-1", ip="203.0.113.5").action == "suspend"

    # The key's suspension is cached; only the new address needs Redis.
    failing.down = True
    on_timeout = client.check(key_id="key-1", ip="203.0.113.6")
    in_pause = client.check(key_id="key-1", ip="203.0.113.7")

    assert on_timeout.action == "suspend"
    assert in_pause.action == "suspend"
    assert client.check(key_id="key-2", ip="203.0.113.8").fail_open
    assert client.failures == 3
