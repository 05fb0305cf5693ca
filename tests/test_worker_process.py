"""A real ``fairuse worker`` process: killed with SIGKILL mid-batch, restarted, nothing lost or doubled."""

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from detector.store import open_store
from tests.factories import T0

pytestmark = pytest.mark.slow


def _worker(prefix, database_url, *extra):
    command = [
        sys.executable, "-m", "detector.cli", "worker", "--db", database_url, "--prefix", prefix,
        "--batch-size", "300", "--claim-idle-ms", "0", "--no-model", *extra,
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _events(count):
    for number in range(count):
        yield {
            "request_id": f"req-{number}", "ts": T0 + number * 2.0, "account_id": f"acct-{number % 5}",
            "key_id": f"key-{number % 5}", "plan": "text", "endpoint": "/v1/chat/completions", "model": "m",
            "prompt_tokens": 10, "completion_tokens": 5, "cost": 0.01, "ip": "198.51.100.7", "status": 200,
            "latency_ms": 500.0, "stream": False,
        }


def _wait_until(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_killed_worker_loses_and_doubles_nothing(redis_client, redis_prefix, sqlite_url):
    stream = f"{redis_prefix}:events"
    pipeline = redis_client.pipeline(transaction=False)
    for record in _events(6000):
        pipeline.xadd(stream, {"event": orjson.dumps(record)})
    pipeline.execute()

    first = _worker(redis_prefix, sqlite_url)
    started = _wait_until(lambda: redis_client.exists(f"{redis_prefix}:window:key:key-0"), 60)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert started, first.stderr.read().decode()
    processed = sum(redis_client.zcard(f"{redis_prefix}:window:key:key-{index}") for index in range(5))
    assert processed < 6000, "the first worker finished before it was killed; nothing was tested"

    second = _worker(redis_prefix, sqlite_url)
    try:
        done = _wait_until(
            lambda: sum(redis_client.zcard(f"{redis_prefix}:window:key:key-{index}") for index in range(5)) == 6000
            and redis_client.xpending(stream, "fairuse-workers")["pending"] == 0,
            120,
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)

    assert done
    assert [redis_client.zcard(f"{redis_prefix}:window:key:key-{index}") for index in range(5)] == [1200] * 5
    decisions = open_store(sqlite_url).all_decisions()
    assert len({decision.id for decision in decisions}) == len(decisions)
    assert second.returncode == 0
