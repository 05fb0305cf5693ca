"""Detectors run in forked child processes: same findings as in one process, clear errors."""

from __future__ import annotations

import os
import pickle
import signal
import threading
from dataclasses import dataclass

import pytest

from detector import pipeline
from detector.detectors import AbnormalCostDetector, Finding, ImageQuotaDetector
from detector.detectors.forked import (
    DETECTOR_COST,
    DetectorProcessError,
    _Child,
    _collect,
    can_fork,
    detect_in_processes,
    split_by_cost,
)
from detector.features import PreparedEvents, prepare_events
from detector.model_registry import load_model
from detector.pipeline import default_detectors, run_detectors, score_events
from detector.readers import read_events
from detector.simulate import simulate_traffic

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available on this platform")


@dataclass(frozen=True, slots=True)
class PidDetector:
    """A detector whose one finding carries, in its evidence, the id of the process that ran ``detect``."""

    reason: str = "pid"
    version: str = "1"

    def detect(self, prepared: PreparedEvents) -> list[Finding]:
        return [
            Finding("key", "k", "a", "text", self.reason, 50.0, 1.0, 0.0, 0.0, 0.0, "pid/1", {"pid": os.getpid()})
        ]


@dataclass(frozen=True, slots=True)
class FailingDetector:
    reason: str = "failing"
    version: str = "1"

    def detect(self, prepared: PreparedEvents) -> list[Finding]:
        raise ValueError("boom in detect")


@dataclass(frozen=True, slots=True)
class DyingDetector:
    reason: str = "dying"
    version: str = "1"

    def detect(self, prepared: PreparedEvents) -> list[Finding]:
        os._exit(3)


@dataclass(frozen=True, slots=True)
class UnpicklableDetector:
    """A detector whose finding carries, in its evidence, a function defined inside ``detect``, which pickle rejects."""

    reason: str = "unpicklable"
    version: str = "1"

    def detect(self, prepared: PreparedEvents) -> list[Finding]:
        def local_function() -> None:
            pass

        return [
            Finding("key", "k", "a", "text", self.reason, 50.0, 1.0, 0.0, 0.0, 0.0, "u/1", {"f": local_function})
        ]


@pytest.fixture(autouse=True)
def cheap_test_detectors(monkeypatch):
    """Make the test detectors cheaper than AbnormalCostDetector, so they form the child's group."""
    for reason in ("pid", "failing", "dying", "unpicklable"):
        monkeypatch.setitem(DETECTOR_COST, reason, 0.1)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("forked")
    simulation = simulate_traffic(folder, keys=80, days=3, seed=3)
    return read_events([simulation.events_path]).frame


def test_forked_findings_equal_in_process(simulated, plans):
    prepared = prepare_events(simulated, plans)
    detectors = default_detectors(load_model())

    in_process = [detector.detect(prepared) for detector in detectors]
    forked = detect_in_processes(detectors, prepared, processes=2)

    assert [len(found) for found in forked] == [len(found) for found in in_process]
    assert sum(len(found) for found in forked) > 0
    assert forked == in_process


def test_child_group_runs_in_another_process(simulated, plans):
    prepared = prepare_events(simulated.head(100), plans)
    detectors = [AbnormalCostDetector(), PidDetector()]

    parent_findings, child_findings = detect_in_processes(detectors, prepared, processes=2)

    assert parent_findings == detectors[0].detect(prepared)
    assert child_findings[0].evidence["pid"] != os.getpid()


def test_failing_child_raises_in_parent(simulated, plans):
    prepared = prepare_events(simulated.head(100), plans)
    detectors = [AbnormalCostDetector(), FailingDetector()]

    with pytest.raises(DetectorProcessError, match=r"(?s)detector failing failed in a child process.*ValueError: boom in detect"):
        detect_in_processes(detectors, prepared, processes=2)


def test_dying_child_raises_in_parent(simulated, plans):
    prepared = prepare_events(simulated.head(100), plans)
    detectors = [AbnormalCostDetector(), DyingDetector()]

    with pytest.raises(DetectorProcessError, match="running dying ended without a result \\(exit status 3\\)"):
        detect_in_processes(detectors, prepared, processes=2)


def test_unpicklable_finding_raises_in_parent(simulated, plans):
    prepared = prepare_events(simulated.head(100), plans)
    detectors = [AbnormalCostDetector(), UnpicklableDetector()]

    with pytest.raises(DetectorProcessError, match=r"(?s)detector unpicklable failed in a child process.*local_function"):
        detect_in_processes(detectors, prepared, processes=2)


def test_child_killed_while_writing_raises():
    findings = {0: [Finding("key", "k", "a", "text", "pid", 50.0, 1.0, 0.0, 0.0, 0.0, "pid/1", {"pad": "x" * 4096})]}
    payload = pickle.dumps((findings, None), protocol=pickle.HIGHEST_PROTOCOL)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.write(write_fd, payload[: len(payload) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)  # not reached: SIGKILL cannot be caught
    os.close(write_fd)

    with pytest.raises(DetectorProcessError, match=f"running pid ended without a result \\(killed by signal {int(signal.SIGKILL)}\\)"):
        _collect(_Child(pid, read_fd, [0]), [PidDetector()])


def test_small_input_stays_in_process(simulated, plans):
    prepared = prepare_events(simulated.head(100), plans)

    findings = run_detectors([ImageQuotaDetector(), PidDetector()], prepared, processes=2)

    assert findings[1][0].evidence["pid"] == os.getpid()


def test_large_input_forks(simulated, plans, monkeypatch):
    monkeypatch.setattr(pipeline, "MIN_EVENTS_TO_FORK", 10)
    prepared = prepare_events(simulated.head(100), plans)

    findings = run_detectors([AbnormalCostDetector(), PidDetector()], prepared, processes=2)

    assert findings[1][0].evidence["pid"] != os.getpid()


def test_running_thread_prevents_fork(simulated, plans, monkeypatch):
    monkeypatch.setattr(pipeline, "MIN_EVENTS_TO_FORK", 10)
    prepared = prepare_events(simulated.head(100), plans)
    release = threading.Event()
    waiter = threading.Thread(target=release.wait)
    waiter.start()
    try:
        assert not can_fork()
        findings = run_detectors([AbnormalCostDetector(), PidDetector()], prepared, processes=2)
    finally:
        release.set()
        waiter.join()

    assert findings[1][0].evidence["pid"] == os.getpid()


def test_score_events_forked_equals_in_process(simulated, plans, policy, monkeypatch):
    monkeypatch.setattr(pipeline, "MIN_EVENTS_TO_FORK", 10)
    detectors = default_detectors(load_model())

    single = score_events(simulated, plans=plans, policy=policy, detectors=detectors, processes=1)
    forked = score_events(simulated, plans=plans, policy=policy, detectors=detectors, processes=2)

    assert forked.findings == single.findings
    assert [decision.to_dict() for decision in forked.decisions] == [
        {**decision.to_dict(), "created_at": forked_decision.to_dict()["created_at"]}
        for decision, forked_decision in zip(single.decisions, forked.decisions)
    ]
    assert forked.subjects.equals(single.subjects)


def test_split_by_cost_balances_shipped_detectors():
    detectors = default_detectors(load_model())
    reasons = [detector.reason for detector in detectors]

    groups = split_by_cost(detectors, 2)

    named = [{reasons[position] for position in group} for group in groups]
    sharing_group = next(group for group in named if "key_sharing" in group)
    assert len(groups) == 2
    assert {"abnormal_cost", "automation"}.isdisjoint(sharing_group)
    assert "anomaly" in sharing_group
    assert sorted(position for group in groups for position in group) == list(range(len(detectors)))


def test_split_by_cost_with_one_process():
    detectors = [ImageQuotaDetector(), PidDetector()]

    assert split_by_cost(detectors, 1) == [[0, 1]]
