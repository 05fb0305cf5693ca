"""Detectors side by side in threads, scoring already prepared events, and the batch frame after coding."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import pytest

from detector import pipeline
from detector.batch import KEPT_AFTER_CODING, BatchOptions, run_batch
from detector.detectors import Finding, ImageQuotaDetector
from detector.features import PreparedEvents, prepare_events
from detector.model_registry import load_model
from detector.pipeline import default_detectors, run_detectors, score_events
from detector.readers import read_events
from detector.simulate import simulate_traffic
from tests.test_forked_detectors import FailingDetector


@dataclass(frozen=True, slots=True)
class ThreadNameDetector:
    """A detector whose one finding names, in its evidence, the thread that ran ``detect``."""

    reason: str = "thread"
    version: str = "1"

    def detect(self, prepared: PreparedEvents) -> list[Finding]:
        name = threading.current_thread().name
        return [Finding("key", "k", "a", "text", self.reason, 50.0, 1.0, 0.0, 0.0, 0.0, "t/1", {"thread": name})]


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    return simulate_traffic(tmp_path_factory.mktemp("threads"), keys=80, days=3, seed=5)


@pytest.fixture(scope="module")
def simulated(traffic):
    return read_events([traffic.events_path]).frame


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(pipeline, "available_cores", lambda: 2)
    monkeypatch.setattr(pipeline, "MIN_EVENTS_FOR_THREADS", 10)


def test_large_input_runs_detectors_in_threads(simulated, plans, two_cores, caplog):
    prepared = prepare_events(simulated.head(100), plans)

    with caplog.at_level(logging.DEBUG, logger="detector.pipeline"):
        findings = run_detectors([ImageQuotaDetector(), ThreadNameDetector()], prepared)

    assert findings[1][0].evidence["thread"].startswith("fairuse-detector")
    assert "2 detectors on 100 events in 2 threads" in caplog.text


def test_small_input_stays_in_calling_thread(simulated, plans, two_cores):
    prepared = prepare_events(simulated.head(5), plans)

    findings = run_detectors([ImageQuotaDetector(), ThreadNameDetector()], prepared)

    assert findings[1][0].evidence["thread"] == threading.current_thread().name


def test_one_core_stays_in_calling_thread(simulated, plans, two_cores, monkeypatch):
    monkeypatch.setattr(pipeline, "available_cores", lambda: 1)
    prepared = prepare_events(simulated.head(100), plans)

    findings = run_detectors([ImageQuotaDetector(), ThreadNameDetector()], prepared)

    assert findings[1][0].evidence["thread"] == threading.current_thread().name


def test_detector_error_reaches_caller(simulated, plans, two_cores):
    prepared = prepare_events(simulated.head(100), plans)

    with pytest.raises(ValueError, match="boom in detect"):
        run_detectors([ImageQuotaDetector(), FailingDetector()], prepared)


def test_threaded_findings_equal_sequential(simulated, plans, policy, monkeypatch):
    detectors = default_detectors(load_model())
    monkeypatch.setattr(pipeline, "MIN_EVENTS_FOR_THREADS", 10**9)
    sequential = score_events(simulated, plans=plans, policy=policy, detectors=detectors)

    monkeypatch.setattr(pipeline, "available_cores", lambda: 2)
    monkeypatch.setattr(pipeline, "MIN_EVENTS_FOR_THREADS", 10)
    threaded = score_events(simulated, plans=plans, policy=policy, detectors=detectors)

    assert len(sequential.findings) > 0
    assert threaded.findings == sequential.findings
    assert [decision.id for decision in threaded.decisions] == [decision.id for decision in sequential.decisions]


def test_prepared_events_score_as_their_frame(simulated, plans, policy):
    detectors = default_detectors(load_model())

    from_frame = score_events(simulated, plans=plans, policy=policy, detectors=detectors)
    from_prepared = score_events(prepare_events(simulated, plans), plans=plans, policy=policy, detectors=detectors)

    assert from_prepared.findings == from_frame.findings
    assert from_prepared.subjects.equals(from_frame.subjects)


def test_prepared_events_reject_since(simulated, plans, policy):
    prepared = prepare_events(simulated, plans)

    with pytest.raises(ValueError, match="since needs the event frame"):
        score_events(prepared, plans=plans, policy=policy, detectors=[], since=float(simulated["ts"].iloc[-1]))


def test_batch_frame_keeps_times_after_coding(traffic, simulated, sqlite_url):
    report = run_batch(BatchOptions(paths=[traffic.events_path], database_url=sqlite_url))

    assert list(report.read.frame.columns) == list(KEPT_AFTER_CODING)
    assert report.read.frame["ts"].equals(simulated["ts"])
    assert len(report.result.prepared.events) == len(simulated)
