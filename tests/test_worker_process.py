"""A real ``fairuse worker`` process: killed with SIGKILL mid-batch, restarted, nothing lost or doubled."""

import os
import signal
import subprocess
import sys

import orjson
import pytest

from detector.store import open_store
from tests.conftest import REDIS_URL
from tests.factories import T0, record, wait_until
from workers.window import EventWindows

pytestmark = pytest.mark.slow


def _worker(prefix, database_url, *extra):
    command = [
        sys.executable, "-m", "detector.cli", "worker", "--window", "--db", database_url, "--redis", REDIS_URL, "--prefix", prefix,
        "--batch-size", "300", "--claim-idle-ms", "0", "--no-model", *extra,
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _events(count):
    for number in range(count):
        yield record(number, ts=T0 + number * 2.0, key=f"key-{number % 5}")


def test_killed_worker_loses_and_doubles_nothing(redis_client, redis_prefix, sqlite_url):
    stream = f"{redis_prefix}:events"
    windows = EventWindows(redis_client, prefix=redis_prefix)
    pipeline = redis_client.pipeline(transaction=False)
    for event in _events(6000):
        pipeline.xadd(stream, {"event": orjson.dumps(event)})
    pipeline.execute()

    first = _worker(redis_prefix, sqlite_url)
    started = wait_until(lambda: redis_client.exists(f"{redis_prefix}:window:key:key-0"), 60)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert started, first.stderr.read().decode()
    processed = sum(windows.count("key", f"key-{index}") for index in range(5))
    assert processed < 6000, "the first worker finished before it was killed; nothing was tested"

    second = _worker(redis_prefix, sqlite_url)
    try:
        done = wait_until(
            lambda: sum(windows.count("key", f"key-{index}") for index in range(5)) == 6000
            and redis_client.xpending(stream, "fairuse-workers")["pending"] == 0,
            120,
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)

    assert done
    assert [windows.count("key", f"key-{index}") for index in range(5)] == [1200] * 5
    decisions = open_store(sqlite_url).all_decisions()
    assert len({decision.id for decision in decisions}) == len(decisions)
    assert second.returncode == 0
