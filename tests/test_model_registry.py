"""The model registry: activation on every backend, rejected artifacts, workers switching without restart."""

import json
import logging
import os
import shutil
import time

import orjson
import pytest
from click.testing import CliRunner
from rq import Queue, SimpleWorker

from detector.cli import main
from detector.model_registry import ModelError, default_version, load_model
from detector.model_switch import ModelSwitch, load_active_model
from detector.store import open_store
from detector.store.model_assignments import ACTIVE, SHADOW, ModelAssignments
from tests.factories import record
from tests.model_helpers import copy_models, corrupt, rewrite_metadata, train_versions
from workers.jobs import consume_stream

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_versions(tmp_path_factory.mktemp("history"), tmp_path_factory.mktemp("trained"))


@pytest.fixture
def models_dir(trained, tmp_path, monkeypatch):
    folder = copy_models(trained, tmp_path / "models")
    monkeypatch.setenv("FAIRUSE_MODELS_DIR", str(folder))
    return folder


def _activate(database, version):
    return CliRunner().invoke(main, ["models", "activate", version, "--db", database, "--by", "analyst"])


def test_activate_records_version(database_url, models_dir):
    result = _activate(database_url, "v2")

    assert result.exit_code == 0, result.output
    assignment = ModelAssignments(open_store(database_url).engine).current(ACTIVE)
    assert assignment.version == "v2"
    assert assignment.changed_by == "analyst"
    assert load_active_model(open_store(database_url), models_dir).version == "v2"


def test_activate_corrupt_artifact_rejected(sqlite_url, models_dir):
    assert _activate(sqlite_url, "v1").exit_code == 0
    corrupt(models_dir, "v2")

    result = _activate(sqlite_url, "v2")

    assert result.exit_code == 2
    assert "checksum" in result.output
    assert "was not activated" in result.output
    assert ModelAssignments(open_store(sqlite_url).engine).current(ACTIVE).version == "v1"


def test_activate_other_features_rejected(sqlite_url, models_dir):
    rewrite_metadata(models_dir, "v2", features=["log_requests", "log_cost"])

    result = _activate(sqlite_url, "v2")

    assert result.exit_code == 2
    assert "trained on features ['log_requests', 'log_cost']" in result.output
    assert ModelAssignments(open_store(sqlite_url).engine).current(ACTIVE) is None


def test_hand_edited_threshold_rejected(models_dir):
    path = models_dir / "iforest-v1.json"
    metadata = json.loads(path.read_text("utf-8"))
    metadata["threshold"] = 0.99
    path.write_text(json.dumps(metadata), "utf-8")

    with pytest.raises(ModelError, match="metadata checksum does not match"):
        load_model(models_dir, "v1")


def test_candidates_never_default(models_dir):
    assert default_version(models_dir) is None
    with pytest.raises(ModelError, match="not a candidate"):
        load_model(models_dir)


def test_switch_keeps_model_when_new_artifact_corrupt(sqlite_url, models_dir, policy, caplog):
    store = open_store(sqlite_url)
    assignments = ModelAssignments(store.engine)
    assignments.record(ACTIVE, "v1")
    switch = ModelSwitch(store, policy=policy, models_dir=models_dir, refresh_seconds=0)
    assert switch.version == "v1"

    good = (models_dir / "iforest-v2.skops").read_bytes()
    corrupt(models_dir, "v2")
    assignments.record(ACTIVE, "v2")
    with caplog.at_level(logging.ERROR, logger="detector.model_switch"):
        detectors = switch.detectors()

    assert switch.version == "v1"
    assert detectors[-1].version == "v1"
    assert "model v2 rejected, keeping v1" in caplog.text

    (models_dir / "iforest-v2.skops").write_bytes(good)
    assert switch.detectors()[-1].version == "v2"


def test_switch_keeps_model_when_hosting_file_broken(sqlite_url, models_dir, policy, caplog, tmp_path, monkeypatch):
    hosting = tmp_path / "hosting.txt"
    hosting.write_text("192.0.2.0/24\n")
    monkeypatch.setenv("FAIRUSE_HOSTING_NETWORKS", str(hosting))
    store = open_store(sqlite_url)
    assignments = ModelAssignments(store.engine)
    assignments.record(ACTIVE, "v1")
    switch = ModelSwitch(store, policy=policy, models_dir=models_dir, refresh_seconds=0)

    # An operator saves a typo into the ranges file while the worker runs, then activates v2.
    hosting.write_text("192.0.2.0/24\nnot-a-net\n")
    os.utime(hosting, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assignments.record(ACTIVE, "v2")
    with caplog.at_level(logging.ERROR, logger="detector.model_switch"):
        detectors = switch.detectors()

    assert switch.version == "v1"
    assert detectors[-1].version == "v1"
    assert "model v2 not switched to, keeping v1" in caplog.text
    assert "not-a-net" in caplog.text

    hosting.write_text("192.0.2.0/24\n")
    os.utime(hosting, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
    assert switch.detectors()[-1].version == "v2"
    assert switch.version == "v2"


def test_switch_waits_for_refresh_interval(sqlite_url, models_dir, policy):
    store = open_store(sqlite_url)
    ModelAssignments(store.engine).record(ACTIVE, "v1")
    now = [0.0]
    switch = ModelSwitch(store, policy=policy, models_dir=models_dir, refresh_seconds=30, clock=lambda: now[0])
    ModelAssignments(store.engine).record(ACTIVE, "v2")

    now[0] = 10.0
    assert switch.detectors()[-1].version == "v1"
    now[0] = 31.0
    assert switch.detectors()[-1].version == "v2"


def test_consume_jobs_pick_up_activation(sqlite_url, models_dir, redis_client, redis_prefix, monkeypatch):
    monkeypatch.setenv("FAIRUSE_PREFIX", redis_prefix)
    monkeypatch.setenv("FAIRUSE_DATABASE_URL", sqlite_url)
    queue = Queue(f"{redis_prefix}-queue", connection=redis_client)
    start = time.time() - 600

    def run_job(number):
        redis_client.xadd(f"{redis_prefix}:events", {"event": orjson.dumps(record(number, ts=start + number))})
        job = queue.enqueue(consume_stream, seconds=1.0)
        SimpleWorker([queue], connection=redis_client).work(burst=True)
        job.refresh()
        assert job.is_finished, job.latest_result()
        return job.return_value()["model"]

    assert _activate(sqlite_url, "v1").exit_code == 0
    assert run_job(1) == "v1"

    assert _activate(sqlite_url, "v2").exit_code == 0
    assert run_job(2) == "v2"

    # An activation whose artifact broke afterwards: the job runs on the earlier model.
    shutil.copy(models_dir / "iforest-v1.json", models_dir / "iforest-v3.json")
    shutil.copy(models_dir / "iforest-v1.skops", models_dir / "iforest-v3.skops")
    ModelAssignments(open_store(sqlite_url).engine).record(ACTIVE, "v3")
    corrupt(models_dir, "v3")
    assert run_job(3) == "v2"


def test_switch_skips_corrupt_shadow(sqlite_url, models_dir, policy, caplog):
    store = open_store(sqlite_url)
    ModelAssignments(store.engine).record(ACTIVE, "v1")
    ModelAssignments(store.engine).record(SHADOW, "v2")
    corrupt(models_dir, "v2")

    with caplog.at_level(logging.ERROR, logger="detector.model_switch"):
        switch = ModelSwitch(store, policy=policy, models_dir=models_dir, refresh_seconds=0)

    assert switch.shadow() is None
    assert switch.version == "v1"
    assert "shadow not started" in caplog.text


def test_shipped_artifact_passes_checks():
    from detector.model_registry import default_models_dir, metadata_checksum, read_metadata

    version = default_version(default_models_dir())
    metadata = read_metadata(default_models_dir(), version)

    assert metadata["metadata_sha256"] == metadata_checksum(metadata)
    assert load_model(default_models_dir(), version).version == version


def test_default_passes_over_damaged_newest(models_dir, caplog):
    rewrite_metadata(models_dir, "v1", candidate=False)
    rewrite_metadata(models_dir, "v2", candidate=False)
    corrupt(models_dir, "v2")

    with caplog.at_level(logging.WARNING):
        chosen = default_version(models_dir)

    assert chosen == "v1"
    assert load_model(models_dir).version == "v1"
    assert "model v2 passed over" in caplog.text


def test_metadata_that_is_no_object_rejected(models_dir, sqlite_url, monkeypatch):
    monkeypatch.setenv("FAIRUSE_DATABASE_URL", sqlite_url)
    (models_dir / "iforest-v1.json").write_text("[1, 2]", "utf-8")

    with pytest.raises(ModelError, match="not an object"):
        load_model(models_dir, "v1")

    result = CliRunner().invoke(main, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
