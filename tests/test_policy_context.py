"""The policy given earlier findings as context: the decisions of one pass over all findings, from stored ones."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from detector.detectors.base import Finding
from detector.model_registry import load_model
from detector.pipeline import default_detectors, score_events
from detector.policy import decide
from detector.readers import read_events
from detector.simulate import simulate_traffic
from detector.store import open_store
from detector.store.models import DecisionRow, FindingRow
from detector.store.repository import finding_id
from tests.test_policy import NOW, _finding

# Shares of the findings, in time order, at which the later ones start.
SHARES = (0.13, 0.5, 0.77, 0.96)
# Later than every simulated event.
END = datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, plans, policy):
    folder = tmp_path_factory.mktemp("context")
    simulation = simulate_traffic(folder, keys=60, days=4, seed=5)
    traffic = read_events([simulation.events_path]).frame
    return score_events(traffic, plans=plans, policy=policy, detectors=default_detectors(load_model()), now=NOW)


def test_context_finding_joins_later_decision(policy):
    earlier = _finding(reason="key_sharing", score=95, impact=3, at=1_000_000.0)
    later = _finding(reason="image_quota", score=80, impact=2, at=1_000_600.0)

    with_context = decide([later], policy, now=NOW, context=[earlier]).decisions
    alone = decide([later], policy, now=NOW).decisions

    assert [decision.reasons for decision in with_context] == [["image_quota", "key_sharing"]]
    assert set(with_context[0].evidence) == {"image_quota", "key_sharing"}
    assert [decision.reasons for decision in alone] == [["image_quota"]]


def test_context_alone_makes_no_decision(policy):
    earlier = _finding(score=90, impact=3, at=1_000_000.0)

    assert decide([earlier], policy, now=NOW).decisions
    assert decide([], policy, now=NOW, context=[earlier]).decisions == []


def test_context_outside_merge_window_is_left_out(policy):
    window = policy.merge_window.total_seconds()
    earlier = _finding(reason="key_sharing", score=95, impact=3, at=1_000_000.0)
    later = _finding(reason="image_quota", score=80, impact=2, at=1_000_000.0 + window + 1)

    decisions = decide([later], policy, now=NOW, context=[earlier]).decisions

    assert [decision.reasons for decision in decisions] == [["image_quota"]]


def test_stored_findings_read_back_equal(database_url, scored):
    store = open_store(database_url)
    store.save_findings(scored.findings)
    subjects = {(finding.subject_type, finding.subject) for finding in scored.findings}

    found = store.findings_between(subjects, 0.0, END.timestamp())

    assert _by_id(found) == _by_id(scored.findings)


def test_findings_between_keeps_start_drops_end(database_url, scored):
    store = open_store(database_url)
    store.save_findings(scored.findings)
    first = min(scored.findings, key=lambda finding: finding.detected_at)
    subject = [(first.subject_type, first.subject)]

    from_start = store.findings_between(subject, first.detected_at, first.detected_at + 1)
    up_to_start = store.findings_between(subject, first.detected_at - 1, first.detected_at)

    assert first in from_start
    assert first not in up_to_start


@pytest.mark.parametrize("share", SHARES)
def test_stored_context_gives_one_pass_decisions(database_url, policy, scored, share):
    times = sorted(finding.detected_at for finding in scored.findings)
    since = times[int(share * (len(times) - 1))]

    _assert_split_decisions(open_store(database_url), policy, scored, since)


def test_stored_context_keeps_merged_evidence(database_url, policy, scored):
    merged = [decision for decision in scored.decisions if len(decision.reasons) > 1]
    assert merged

    store = open_store(database_url)
    for decision in merged[:5]:
        _empty(store)
        # The finding's own time: a decision's time is the finding's rounded to microseconds.
        since = min(finding.detected_at for finding in scored.findings if _at(finding) == decision.detected_at)
        _assert_split_decisions(store, policy, scored, since)


def _assert_split_decisions(store, policy, scored, since: float) -> None:
    """Decide the findings before ``since``, store them, then the later ones with stored context and decisions."""
    before = [finding for finding in scored.findings if finding.detected_at < since]
    after = [finding for finding in scored.findings if finding.detected_at >= since]
    store.save_findings(before)
    store.save_decisions(decide(before, policy, now=NOW).decisions)

    flagged = {(finding.subject_type, finding.subject) for finding in after}
    window = policy.merge_window.total_seconds()
    later = decide(
        after, policy, store.decisions_for(flagged), now=NOW,
        suspensions=store.suspensions_between(datetime.fromtimestamp(since - 3600, UTC), END),
        context=store.findings_between(flagged, since - window, since),
    )

    expected = [decision.to_dict() for decision in scored.decisions if decision.detected_at >= _at(since)]
    assert [decision.to_dict() for decision in later.decisions] == expected


def _at(item: Finding | float) -> datetime:
    """Return the time of a finding, or of epoch seconds, as decisions keep it."""
    seconds = item.detected_at if isinstance(item, Finding) else item
    return datetime.fromtimestamp(seconds, UTC)


def _empty(store) -> None:
    """Delete every stored finding and decision, so that each split starts from an empty store."""
    with Session(store.engine) as session, session.begin():
        session.execute(delete(DecisionRow))
        session.execute(delete(FindingRow))


def _by_id(findings) -> dict:
    """Return the findings by id, their times rounded to the store's microseconds."""
    return {finding_id(finding): _to_microseconds(finding) for finding in findings}


def _to_microseconds(finding: Finding) -> Finding:
    times = {name: round(getattr(finding, name), 6) for name in ("detected_at", "window_start", "window_end")}
    return replace(finding, **times)
