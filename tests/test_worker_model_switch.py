"""A running ``fairuse worker`` process switches models when one is activated, and keeps its model when the new artifact is corrupt."""

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest
from click.testing import CliRunner

from detector.cli import main
from detector.store import open_store
from detector.store.model_assignments import ACTIVE, ModelAssignments
from tests.conftest import REDIS_URL
from tests.factories import record, wait_until
from tests.model_helpers import corrupt, train_versions

pytestmark = pytest.mark.slow


def test_worker_switches_model_without_restart(redis_client, redis_prefix, sqlite_url, tmp_path):
    models_dir = train_versions(tmp_path / "history", tmp_path / "models", versions=("v1", "v2", "v3"))
    assert CliRunner().invoke(main, ["models", "activate", "v1", "--db", sqlite_url],
                              env={"FAIRUSE_MODELS_DIR": str(models_dir)}).exit_code == 0
    log = tmp_path / "worker.log"
    command = [
        sys.executable, "-m", "detector.cli", "-v", "worker", "--window", "--db", sqlite_url, "--redis", REDIS_URL, "--prefix", redis_prefix,
        "--claim-idle-ms", "0", "--model-refresh", "0.2",
    ]
    numbers = iter(range(1_000_000))
    start = time.time() - 600

    def send_event_and_read_log():
        redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(record(next(numbers), ts=start))})
        return log.read_text("utf-8")

    with log.open("w") as handle:
        worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle,
                                  env={**os.environ, "FAIRUSE_MODELS_DIR": str(models_dir)})
    try:
        started = wait_until(lambda: "scoring with model v1" in send_event_and_read_log(), 60)

        activated = CliRunner().invoke(main, ["models", "activate", "v2", "--db", sqlite_url],
                                       env={"FAIRUSE_MODELS_DIR": str(models_dir)})
        switched = wait_until(lambda: "model v2 active (was v1)" in send_event_and_read_log(), 60)

        corrupt(models_dir, "v3")
        ModelAssignments(open_store(sqlite_url).engine).record(ACTIVE, "v3")
        kept = wait_until(lambda: "model v3 rejected, keeping v2" in send_event_and_read_log(), 60)
        still_running = worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

    output = log.read_text("utf-8")
    assert started, output
    assert activated.exit_code == 0, activated.output
    assert switched, output
    assert kept, output
    assert still_running
    assert "model v3 active" not in output
    assert worker.returncode == 0


def test_state_worker_switches_model_without_restart(redis_client, redis_prefix, sqlite_url, tmp_path):
    models_dir = train_versions(tmp_path / "history", tmp_path / "models", versions=("v1", "v2"))
    environment = {"FAIRUSE_MODELS_DIR": str(models_dir)}
    assert CliRunner().invoke(main, ["models", "activate", "v1", "--db", sqlite_url], env=environment).exit_code == 0
    log = tmp_path / "worker.log"
    command = [
        sys.executable, "-m", "detector.cli", "-v", "worker", "--state", "--db", sqlite_url, "--redis", REDIS_URL, "--prefix", redis_prefix,
        "--model-refresh", "0.2",
    ]
    with log.open("w") as handle:
        worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle, env={**os.environ, **environment})
    try:
        started = wait_until(lambda: "owns partition 0" in log.read_text("utf-8"), 60)
        activated = CliRunner().invoke(main, ["models", "activate", "v2", "--db", sqlite_url], env=environment)
        switched = wait_until(
            lambda: "now scores anomaly days with model v2 (was v1) in 1 partitions" in log.read_text("utf-8"), 60
        )
        still_running = worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

    output = log.read_text("utf-8")
    assert started, output
    assert activated.exit_code == 0, activated.output
    assert switched, output
    assert still_running
    assert worker.returncode == 0
