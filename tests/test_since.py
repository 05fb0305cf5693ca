"""Scoring with ``since``: the findings from ``since`` on and the decisions of scoring every event."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.detectors.base import detect_since
from detector.features import prepare_events
from detector.model_registry import load_model
from detector.pipeline import default_detectors, score_events
from detector.readers import read_events
from detector.simulate import simulate_traffic

NOW = datetime(2026, 12, 5, tzinfo=UTC)
# Shares of the simulated span at which scoring starts: mid-hour, near the end, and early.
SHARES = (0.13, 0.5, 0.77, 0.96)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("since")
    simulation = simulate_traffic(folder, keys=60, days=4, seed=5)
    return read_events([simulation.events_path]).frame


@pytest.fixture(scope="module")
def detectors():
    return default_detectors(load_model())


@pytest.fixture(scope="module")
def prepared(traffic, plans):
    return prepare_events(traffic, plans)


def _time_at(frame, share: float) -> float:
    ts = frame["ts"].to_numpy()
    return float(ts.min() + share * (ts.max() - ts.min()))


def _from(findings, since: float) -> list:
    return [finding for finding in findings if finding.detected_at >= since]


def _assert_detectors_agree(detectors, prepared, since: float) -> None:
    for detector in detectors:
        every = _from(detector.detect(prepared), since)
        recent = _from(detect_since(detector, prepared, since), since)
        assert recent == every, f"{detector.reason} with since={since}"


@pytest.mark.parametrize("share", SHARES)
def test_detectors_since_keep_later_findings(traffic, prepared, detectors, share):
    _assert_detectors_agree(detectors, prepared, _time_at(traffic, share))


def test_detectors_since_at_period_starts(traffic, prepared, detectors):
    middle = _time_at(traffic, 0.6)

    for period in (600.0, 3600.0, 86400.0):
        _assert_detectors_agree(detectors, prepared, middle // period * period)


def test_detectors_since_at_an_event(traffic, prepared, detectors):
    ts = np.sort(traffic["ts"].to_numpy())

    _assert_detectors_agree(detectors, prepared, float(ts[len(ts) * 2 // 3]))


def test_detectors_since_just_after_findings(prepared, detectors):
    """Start just after one of a detector's own findings, where the next finding is an escalation of it or not."""
    for detector in detectors:
        every = detector.detect(prepared)
        assert every, detector.reason
        for finding in every[:: max(len(every) // 8, 1)]:
            since = finding.detected_at + 0.0005
            recent = _from(detect_since(detector, prepared, since), since)
            assert recent == _from(every, since), f"{detector.reason} with since={since}"


@settings(max_examples=8, deadline=None)
@given(share=st.floats(min_value=0.0, max_value=1.0))
def test_detectors_since_any_split(traffic, prepared, detectors, share):
    _assert_detectors_agree(detectors, prepared, _time_at(traffic, share))


def test_detectors_since_build_fewer_findings(traffic, prepared, detectors):
    since = _time_at(traffic, 0.96)

    every = sum(len(detector.detect(prepared)) for detector in detectors)
    recent = sum(len(detect_since(detector, prepared, since)) for detector in detectors)

    assert recent < every / 2


@pytest.fixture(scope="module")
def scored(traffic, plans, policy, detectors):
    return score_events(traffic, plans=plans, policy=policy, detectors=detectors, now=NOW)


def _assert_same_decisions(traffic, plans, policy, detectors, every, since: float) -> None:
    # The decisions before ``since`` stand for those an earlier pass stored.
    earlier = [decision for decision in every.decisions if decision.detected_at.timestamp() < since]

    def prior(subjects):
        requested = set(subjects)
        return [decision for decision in earlier if (decision.subject_type, decision.subject) in requested]

    def suspensions(start, end):
        return [decision for decision in earlier if decision.action == "suspend" and start <= decision.detected_at < end]

    recent = score_events(
        traffic, plans=plans, policy=policy, detectors=detectors, now=NOW, since=since, prior=prior,
        suspensions=suspensions,
    )

    assert _from(recent.findings, since) == _from(every.findings, since)
    expected = [decision.to_dict() for decision in every.decisions if decision.detected_at.timestamp() >= since]
    assert [decision.to_dict() for decision in recent.decisions] == expected


@pytest.mark.parametrize("share", SHARES)
def test_score_events_since_same_decisions(traffic, plans, policy, detectors, scored, share):
    assert scored.decisions

    _assert_same_decisions(traffic, plans, policy, detectors, scored, _time_at(traffic, share))


def test_score_events_since_keeps_merged_evidence(traffic, plans, policy, detectors, scored):
    """Start at decisions that merge an earlier finding: the earlier one must still reach the policy."""
    merged = [decision for decision in scored.decisions if len(decision.reasons) > 1]
    assert merged

    for decision in merged:
        _assert_same_decisions(traffic, plans, policy, detectors, scored, decision.detected_at.timestamp())
