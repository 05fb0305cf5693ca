"""The state worker's model switch, shadow and checkpoint checks, against real Redis and PostgreSQL."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector.detectors import AnomalyDetector
from detector.model_registry import AnomalyModel, default_models_dir, default_version, load_model
from detector.model_switch import ModelSwitch
from detector.pipeline import default_detectors, score_events
from detector.store import open_store
from detector.store.model_assignments import ACTIVE, SHADOW, ModelAssignments
from detector.store.repository import finding_id
from tests.model_helpers import rewrite_metadata, train_versions
from tests.test_state_consumer import _all_findings, _append, _decision_keys, _drain, state_worker_builder
from workers.entries import clock_tick
from workers.state_consumer import CLOCK_MARGIN
from workers.checkpoint import MAGIC, CheckpointError, PartitionState, dump_state, load_state
from workers.repeats import RepeatedRequests
from workers.state_models import StateModels

pytestmark = pytest.mark.slow

DAY = 86400.0
SHIPPED = default_version(default_models_dir())


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """v1 and v2 trained on other traffic, v2 with a low threshold and ceiling so it flags and decides more; and the shipped model."""
    folder = tmp_path_factory.mktemp("state-models")
    models = train_versions(folder / "history", folder / "models", versions=("v1", "v2"))
    rewrite_metadata(models, "v2", threshold=0.45, thresholds={"anomaly": {"ceiling": 0.46}})
    for path in default_models_dir().glob(f"iforest-{SHIPPED}.*"):
        shutil.copy(path, models / path.name)
    return models


@pytest.fixture(scope="module")
def traffic(scored_simulation):
    """Simulated sorted traffic of 80 keys over 3 days, its first UTC day's start, and the batch command's decisions."""
    frame = scored_simulation.frame
    return {
        "frame": frame,
        "start": float(frame["ts"].min()) // DAY * DAY,
        "decisions": _decision_keys(scored_simulation.batch.all_decisions()),
    }


@pytest.fixture
def store(postgres_url):
    return open_store(postgres_url)


@pytest.fixture
def make_worker(redis_client, redis_prefix, store, plans, policy):
    return state_worker_builder(redis_client, redis_prefix, store, plans, policy, default_detectors(load_model()))


def _switch(store, policy, models_dir) -> ModelSwitch:
    return ModelSwitch(store, policy=policy, models_dir=models_dir, refresh_seconds=0)


def _rounds(worker, idle_rounds: int = 3) -> None:
    """Run the worker's rounds until it reads no entry for ``idle_rounds`` rounds, and keep its partitions."""
    idle = 0
    while idle < idle_rounds:
        idle = idle + 1 if worker.process_once().entries == 0 else 0


def _split(traffic) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the traffic before and from the middle of its second day."""
    frame = traffic["frame"]
    middle = traffic["start"] + 1.5 * DAY
    return frame[frame["ts"] < middle].reset_index(drop=True), frame[frame["ts"] >= middle].reset_index(drop=True)


def _worker_on_first_half_v1(make_worker, redis_client, redis_prefix, store, policy, models_dir, traffic):
    """Return a worker that scored the traffic's first day and a half on model v1, the rest, and the second day's start."""
    first, rest = _split(traffic)
    ModelAssignments(store.engine).record(ACTIVE, "v1")
    worker = make_worker("w0", models=_switch(store, policy, models_dir))
    _append(redis_client, redis_prefix, first)
    _rounds(worker)
    return worker, rest, traffic["start"] + DAY


def _anomaly_findings(store) -> list:
    return [finding for finding in _all_findings(store) if finding.reason == "anomaly"]


def _reference_anomaly_ids(traffic, plans, policy, model, since: float) -> set[str]:
    """Return the ids of the anomaly findings a batch pass on ``model`` makes for the days from ``since`` on."""
    result = score_events(traffic["frame"], plans=plans, policy=policy, detectors=default_detectors(model))
    return {finding_id(finding) for finding in result.findings if finding.reason == "anomaly" and finding.detected_at >= since}


# Model switch in a running worker ----------------------------------------------------------


def test_running_worker_switches_model_keeping_state(make_worker, redis_client, redis_prefix, store, plans, policy,
                                                     models_dir, traffic, caplog):
    worker, rest, second_day = _worker_on_first_half_v1(make_worker, redis_client, redis_prefix, store, policy,
                                                        models_dir, traffic)
    state = worker.owned[0]
    subjects = len(state.scorer.ranks)

    ModelAssignments(store.engine).record(ACTIVE, "v2")
    _append(redis_client, redis_prefix, rest)
    with caplog.at_level(logging.INFO, logger="workers.state_models"):
        _rounds(worker)
        worker.close_quiet_keys()

    assert worker.owned[0] is state
    assert len(state.scorer.ranks) >= subjects > 0
    assert worker.models.version == "v2"
    assert state.scorer.states[-1][0].detector.version == "v2"
    assert "scores anomaly days with model v2 (was v1) in 1 partitions" in caplog.text
    found = _anomaly_findings(store)
    before = [finding for finding in found if finding.detected_at < second_day]
    after = [finding for finding in found if finding.detected_at >= second_day]
    assert before
    assert after
    assert {finding.origin for finding in before} == {"anomaly/iforest-v1"}
    assert {finding.origin for finding in after} == {"anomaly/iforest-v2"}
    # The second day's counts span the switch: only a kept state gives the findings of a pass on v2 alone.
    assert {finding_id(finding) for finding in after} == _reference_anomaly_ids(
        traffic, plans, policy, load_model(models_dir, "v2"), second_day
    )
    decisions = store.all_decisions()
    assert any("iforest-v2" in decision.origin for decision in decisions)
    assert not any("iforest-v1" in decision.origin and decision.detected_at.timestamp() >= second_day for decision in decisions)
    worker.stop()


def test_checkpoint_of_one_model_loads_on_another(make_worker, redis_client, redis_prefix, store, plans, policy,
                                                  models_dir, traffic, caplog):
    before, rest, second_day = _worker_on_first_half_v1(make_worker, redis_client, redis_prefix, store, policy,
                                                        models_dir, traffic)
    last_id = before.owned[0].last_id
    subjects = len(before.owned[0].scorer.ranks)
    before.stop()

    ModelAssignments(store.engine).record(ACTIVE, "v2")
    after = make_worker("w1", models=_switch(store, policy, models_dir))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        after.process_once()
    state = after.owned[0]

    assert "starting with empty state" not in caplog.text
    assert "checkpoint written on model v1, its anomaly days are scored with model v2" in caplog.text
    assert state.last_id == last_id
    assert len(state.scorer.ranks) == subjects > 0
    assert state.scorer.states[-1][0].detector.version == "v2"
    _append(redis_client, redis_prefix, rest)
    _drain(after)
    later = {finding_id(finding) for finding in _anomaly_findings(store) if finding.detected_at >= second_day}
    assert later
    assert later == _reference_anomaly_ids(traffic, plans, policy, load_model(models_dir, "v2"), second_day)


def test_load_state_puts_current_model_in(plans, models_dir):
    on_a = default_detectors(load_model(models_dir, "v1"))
    on_b = default_detectors(load_model(models_dir, "v2"))
    state = PartitionState(scorer=_scorer(on_a, plans), repeats=RepeatedRequests(60.0), partitions=1)

    loaded = load_state(dump_state(state, on_a, plans), on_b, plans)

    assert loaded.scorer.detectors[-1] is on_b[-1]
    assert loaded.scorer.states[-1][0].detector is on_b[-1]


def _scorer(detectors, plans):
    from detector.state.scorer import STREAM_RETENTION, StateScorer

    return StateScorer(detectors=detectors, plans=plans, retention=STREAM_RETENTION)


class _FixedSwitch:
    """A stand-in for ``ModelSwitch`` that offers the detectors it is given."""

    def __init__(self, detectors) -> None:
        self.offered = detectors

    def detectors(self):
        return self.offered

    def shadow(self):
        return None


def test_model_of_other_features_not_switched_to(plans, models_dir, caplog):
    current = default_detectors(load_model(models_dir, "v1"))
    model = load_model(models_dir, "v2")
    other = AnomalyModel(estimator=model.estimator, metadata={**model.metadata, "features": ["log_requests"]})
    switch = _FixedSwitch(current)
    models = StateModels(current, switch)
    scorer = _scorer(current, plans)
    switch.offered = [*current[:-1], dataclasses.replace(current[-1], model=other)]

    with caplog.at_level(logging.ERROR, logger="workers.state_models"):
        detectors = models.refresh([scorer])

    assert detectors is models.detectors
    assert models.version == "v1"
    assert scorer.detectors[-1] is current[-1]
    assert "model v2 not used by the state worker, which keeps v1: it was trained on features ['log_requests']" in caplog.text


def test_model_added_later_not_switched_to(plans, models_dir, caplog):
    without = default_detectors(None)
    switch = _FixedSwitch(without)
    models = StateModels(without, switch)
    switch.offered = default_detectors(load_model(models_dir, "v2"))

    with caplog.at_level(logging.ERROR, logger="workers.state_models"):
        detectors = models.refresh([_scorer(without, plans)])
        models.refresh([])

    assert detectors is models.detectors
    assert not any(isinstance(detector, AnomalyDetector) for detector in detectors)
    assert caplog.text.count("model v2 not used by the state worker: it changes the detectors") == 1


# Clock ticks ---------------------------------------------------------------------------------


def test_clock_tick_closes_days_of_quiet_partition(make_worker, redis_client, redis_prefix, store, plans, policy,
                                                    traffic, caplog):
    frame = traffic["frame"]
    newest = float(frame["ts"].max())
    tick = newest // DAY * DAY + DAY + 3600
    worker = make_worker("w0")
    _append(redis_client, redis_prefix, frame)
    _rounds(worker)
    worker.close_quiet_keys()
    before = {finding_id(finding) for finding in _anomaly_findings(store)}

    # A tick no later than the newest event plus the margin leaves the days to event time, and so does one far
    # ahead of the worker's clock (milliseconds written for seconds).
    redis_client.xadd(f"{redis_prefix}:events", clock_tick(newest + CLOCK_MARGIN))
    _rounds(worker)
    assert {finding_id(finding) for finding in _anomaly_findings(store)} == before
    redis_client.xadd(f"{redis_prefix}:events", clock_tick(tick * 1000))
    with caplog.at_level(logging.WARNING, logger="workers.state_consumer"):
        _rounds(worker)
    assert {finding_id(finding) for finding in _anomaly_findings(store)} == before
    assert "s ahead of this worker's clock; ignored" in caplog.text

    redis_client.xadd(f"{redis_prefix}:events", clock_tick(tick))
    _rounds(worker)

    after = {finding_id(finding) for finding in _anomaly_findings(store)}
    detectors = [
        dataclasses.replace(detector, as_of=tick - CLOCK_MARGIN) if isinstance(detector, AnomalyDetector)
        else detector
        for detector in default_detectors(load_model())
    ]
    reference = score_events(frame, plans=plans, policy=policy, detectors=detectors).findings
    assert after == {finding_id(finding) for finding in reference if finding.reason == "anomaly"}
    last_day = {finding_id(finding) for finding in reference if finding.reason == "anomaly" and finding.detected_at >= newest // DAY * DAY}
    assert last_day
    assert not last_day & before
    assert len(worker.owned[0].tail) == 0


# Shadow --------------------------------------------------------------------------------------


def test_shadow_decides_on_closed_days_without_enforcing(make_worker, redis_client, redis_prefix, store, policy,
                                                        models_dir, traffic):
    assignments = ModelAssignments(store.engine)
    assignments.record(ACTIVE, SHIPPED)
    assignments.record(SHADOW, "v2")
    worker = make_worker("w0", models=_switch(store, policy, models_dir))
    published = []
    publish = worker.publisher.publish
    worker.publisher.publish = lambda decisions, **options: publish(published.extend(decisions) or decisions, **options)
    _append(redis_client, redis_prefix, traffic["frame"])

    _drain(worker)

    decisions = store.all_decisions()
    enforced = [decision for decision in decisions if not decision.origin.startswith("shadow/")]
    shadowed = [decision for decision in decisions if decision.origin.startswith("shadow/")]
    assert _decision_keys(enforced) == traffic["decisions"]
    assert shadowed
    assert all(decision.simulated for decision in shadowed)
    anomaly = [decision for decision in shadowed if "anomaly/iforest-v2" in decision.origin]
    assert anomaly
    # Only closed days are scored: the last day of the traffic ends after its newest event.
    newest = float(traffic["frame"]["ts"].max())
    assert all(decision.detected_at.timestamp() < newest // DAY * DAY for decision in anomaly)
    assert {decision.id for decision in published} == {decision.id for decision in enforced}


def test_shadow_of_policy_alone_repeats_enforced_decisions(make_worker, redis_client, redis_prefix, store, policy,
                                                          models_dir, traffic):
    assignments = ModelAssignments(store.engine)
    assignments.record(ACTIVE, SHIPPED)
    text = (Path(__file__).parents[1] / "detector" / "config" / "policy.toml").read_text("utf-8")
    assignments.record(SHADOW, None, policy_name="same-policy.toml", policy_toml=text)
    worker = make_worker("w0", models=_switch(store, policy, models_dir))
    _append(redis_client, redis_prefix, traffic["frame"])

    _drain(worker)

    decisions = store.all_decisions()
    enforced = {(decision.subject, decision.action, decision.detected_at, tuple(decision.reasons))
                for decision in decisions if not decision.simulated}
    shadowed = {(decision.subject, decision.action, decision.detected_at, tuple(decision.reasons))
                for decision in decisions if decision.origin.startswith("shadow/")}
    assert len(enforced) >= 10
    assert shadowed == enforced


# Checkpoint checks ---------------------------------------------------------------------------


def _checkpointed_worker(make_worker, redis_client, redis_prefix, traffic, **settings):
    """Run worker w0 over the traffic's first 500 events and stop it, which writes its checkpoint; return the state it had."""
    worker = make_worker("w0", **settings)
    _append(redis_client, redis_prefix, traffic["frame"].iloc[:500].reset_index(drop=True))
    _rounds(worker)
    state = worker.owned[0]
    worker.stop()
    return state


def test_damaged_checkpoint_starts_partition_empty(make_worker, redis_client, redis_prefix, traffic, caplog):
    _checkpointed_worker(make_worker, redis_client, redis_prefix, traffic)
    key = f"{redis_prefix}:state:0"
    data = bytearray(redis_client.get(key))
    data[len(data) // 2] ^= 0x04
    redis_client.set(key, bytes(data))

    successor = make_worker("w1")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="workers.state_consumer"):
        successor.process_once()

    assert f"partition 0: checkpoint {key} not loaded, starting with empty state: checkpoint is damaged" in caplog.text
    assert successor.owned[0].last_id is None
    assert successor.owned[0].scorer.ranks == {}


def test_damaged_checkpoint_rejected(plans):
    detectors = default_detectors(load_model())
    data = bytearray(dump_state(PartitionState(_scorer(detectors, plans), RepeatedRequests(60.0)), detectors, plans))
    data[-3] ^= 0x01

    with pytest.raises(CheckpointError, match="CRC-32 does not match"):
        load_state(bytes(data), detectors, plans)


def _as_version_1(data: bytes) -> bytes:
    """Return a version-2 checkpoint in the version-1 layout: the pickle after MAGIC and version, no CRC or JSON header."""
    content = data[5 + 4 :]
    length = int.from_bytes(content[:4], "big")
    return MAGIC + bytes([1]) + content[4 + length :]


def test_version_1_checkpoint_loads(make_worker, redis_client, redis_prefix, traffic, caplog):
    written = _checkpointed_worker(make_worker, redis_client, redis_prefix, traffic)
    key = f"{redis_prefix}:state:0"
    redis_client.set(key, _as_version_1(redis_client.get(key)))

    successor = make_worker("w1")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workers.state_consumer"):
        successor.process_once()

    assert "starting with empty state" not in caplog.text
    assert successor.owned[0].last_id == written.last_id
    assert successor.owned[0].scorer.ranks == written.scorer.ranks


def test_oversized_checkpoint_starts_partition_empty(make_worker, redis_client, redis_prefix, traffic, caplog):
    with caplog.at_level(logging.ERROR, logger="workers.checkpoint"):
        _checkpointed_worker(make_worker, redis_client, redis_prefix, traffic, checkpoint_max_bytes=4096)
    size = redis_client.strlen(f"{redis_prefix}:state:0")
    assert size > 4096
    assert f"checkpoint of {size} bytes is larger than the limit of 4096 bytes, so a new owner will reject it" in caplog.text

    successor = make_worker("w1", checkpoint_max_bytes=4096)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="workers.state_consumer"):
        successor.process_once()

    assert f"checkpoint of {size} bytes is larger than the limit of 4096 bytes" in caplog.text
    assert "starting with empty state" in caplog.text
    assert successor.owned[0].last_id is None


def test_oversized_checkpoint_rejected_by_load_state(plans):
    detectors = default_detectors(load_model())
    data = dump_state(PartitionState(_scorer(detectors, plans), RepeatedRequests(60.0)), detectors, plans)

    with pytest.raises(CheckpointError, match=f"checkpoint of {len(data)} bytes is larger than the limit of 100 bytes"):
        load_state(data, detectors, plans, max_bytes=100)
    assert load_state(data, detectors, plans, max_bytes=len(data)).last_id is None


class _Call:
    """Pickles as a call of ``function`` with ``arguments``, as a hostile checkpoint would contain."""

    def __init__(self, function, *arguments) -> None:
        self.function = function
        self.arguments = arguments

    def __reduce__(self):
        return self.function, self.arguments


_RANGE = _Call(pd.RangeIndex, 0, 400_000)


@pytest.mark.parametrize("call, name", [
    (_Call(list, _Call(pd.RangeIndex, 0, 10**12)), "pandas.RangeIndex"),
    (_Call(np.ndarray, (10**6, 10**6)), "numpy.ndarray"),
    (_Call(pd.core.indexes.base._new_Index, pd.RangeIndex, {"start": 0, "stop": 10**12, "step": 1}),
     "pandas.core.indexes.base._new_Index"),
    # Each copy of one memoized RangeIndex is charged again.
    ([_Call(list, _RANGE), _Call(list, _RANGE), _Call(list, _RANGE)], "builtins.list"),
])
def test_checkpoint_cannot_create_large_objects(plans, call, name):
    detectors = default_detectors(load_model())
    data = MAGIC + bytes([1]) + pickle.dumps(call, protocol=5)
    assert len(data) < 300

    with pytest.raises(CheckpointError, match=f"checkpoint makes {name} create"):
        load_state(data, detectors, plans)
