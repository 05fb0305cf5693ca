"""A worker survives its Redis restarting empty: it reconnects and republishes decisions."""

import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis

from detector.decisions import Decision
from detector.pipeline import default_detectors
from detector.store import open_store
from workers.consumer import StreamConsumer, StreamSettings
from workers.publish import DecisionPublisher, subject_key
from workers.window import EventWindows
from tests.factories import T0, record, wait_until

pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_redis(port, folder):
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("redis-server did not start on a free loopback port; is redis-server installed?")


def _event(number):
    return record(number, ts=T0 + number)


def test_worker_rides_out_redis_restart(tmp_path, sqlite_url, plans, policy):
    port = _free_port()
    server = _start_redis(port, tmp_path)
    client = redis.Redis(port=port, socket_timeout=1)
    store = open_store(sqlite_url)
    now = datetime.now(UTC)
    standing = Decision(
        id="standing", subject_type="key", subject="key-9", action="suspend", reasons=["abnormal_cost"], score=90.0,
        evidence={}, detected_at=now - timedelta(minutes=1), created_at=now, expires_at=now + timedelta(hours=1),
        origin="abnormal_cost/1+policy/default-1",
    )
    store.save_decisions([standing])
    consumer = StreamConsumer(
        client, store, plans=plans, policy=policy, detectors=default_detectors(),
        windows=EventWindows(client), publisher=DecisionPublisher(client),
        settings=StreamSettings(block_ms=50, claim_idle_ms=1000),
    )
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        for number in range(100):
            client.xadd("fairuse:events", {"event": orjson.dumps(_event(number))})
        assert wait_until(lambda: EventWindows(client).count("key", "key-1") == 100, 30)
        assert client.exists(subject_key("fairuse", "key", "key-9"))

        server.kill()
        server.wait()
        time.sleep(0.5)
        server = _start_redis(port, tmp_path)

        assert wait_until(lambda: client.exists(subject_key("fairuse", "key", "key-9")), 30)
        for number in range(100, 150):
            client.xadd("fairuse:events", {"event": orjson.dumps(_event(number))})
        assert wait_until(lambda: EventWindows(client).count("key", "key-1") == 50, 30)
    finally:
        stop.set()
        thread.join(timeout=10)
        server.kill()
        server.wait()
    assert not thread.is_alive()
