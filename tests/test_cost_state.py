"""abnormal_cost from carried spend bins: hand-made chunkings that must give the batch findings."""

from __future__ import annotations

import numpy as np

from detector.state import Chunk
from tests.factories import DAY, HOUR, T0, events, frame
from tests.test_chunk_invariance import CASES, assert_chunk_invariant, comparable, rows_at, run_in_chunks

COST = next(case for case in CASES if case.name == "abnormal_cost")


def _hourly(key: str, cost: float, days: int, **kwargs):
    """One request a minute past every hour, each costing ``cost``."""
    return events(key, T0 + 60 + np.arange(days * 24) * HOUR, cost=cost, **kwargs)


def _theft(key: str, start: float, requests: int = 120, gap: float = 30.0, **kwargs):
    return events(key, start + np.arange(requests) * gap, cost=0.5, ip="203.0.113.9", **kwargs)


def _kinds(findings) -> set[str]:
    return {finding.evidence["kind"] for finding in findings}


def test_spike_across_chunk_boundaries(plans):
    start = T0 + 5 * DAY + 1800
    whole = frame(_hourly("victim", 0.05, 5), _theft("victim", start))
    theft_rows = rows_at(whole, [start])[0] + np.arange(0, 120, 7)

    findings = assert_chunk_invariant(COST, whole, theft_rows, plans)

    assert len(findings) >= 3
    assert _kinds(findings) == {"rolling_hour", "short_window"}
    assert min(finding.detected_at for finding in findings) < start + 10 * 60


def test_minute_split_between_chunks(plans):
    start = T0 + 5 * DAY + 1800
    whole = frame(_hourly("victim", 0.05, 5), _theft("victim", start, requests=60, gap=10.0))
    ts = whole["ts"].to_numpy()
    # Six requests a minute, so each cut falls between two requests of one minute.
    cuts = rows_at(whole, [start + 10.0 * offset for offset in (1, 3, 8, 14, 20, 33)])

    assert all(ts[cut - 1] // 60 == ts[cut] // 60 for cut in cuts)
    findings = assert_chunk_invariant(COST, whole, cuts, plans)
    assert findings


def test_baseline_from_earlier_chunks(plans):
    """Each history day comes in its own chunk, so the spike's baseline is read from carried hour bins only."""
    start = T0 + 5 * DAY + 1800
    whole = frame(_hourly("victim", 0.05, 5), _theft("victim", start))
    midnights = rows_at(whole, T0 + np.arange(1, 6) * DAY)

    findings = assert_chunk_invariant(COST, whole, [*midnights, rows_at(whole, [start])[0]], plans)

    hour_findings = [finding for finding in findings if finding.evidence["kind"] == "rolling_hour"]
    assert hour_findings
    assert {finding.evidence["baseline_hours"] for finding in hour_findings} == {5 * 24}
    assert {finding.evidence["baseline_median"] for finding in hour_findings} == {0.1}


def test_mad_zero_baseline_across_chunks(plans):
    quiet = _hourly("steady", 0.10, 7)
    spike = events("steady", T0 + 7 * DAY + np.arange(10) * 60, cost=0.10)
    whole = frame(quiet, spike)

    findings = assert_chunk_invariant(COST, whole, range(1, len(whole)), plans)

    assert findings
    assert {finding.evidence["baseline_mad"] for finding in findings} == {0}
    assert all(np.isfinite(finding.evidence["robust_z"]) for finding in findings)


def test_new_key_in_later_chunk(plans):
    start = T0 + 5 * DAY + 1800
    whole = frame(_hourly("victim", 0.05, 5), _theft("fresh", start, requests=60))
    first_fresh = int(np.flatnonzero(whole["key_id"].to_numpy() == "fresh")[0])

    findings = assert_chunk_invariant(COST, whole, [first_fresh, first_fresh + 1, first_fresh + 20], plans)

    fresh = [finding for finding in findings if finding.subject == "fresh"]
    assert fresh
    assert {finding.evidence["baseline_hours"] for finding in fresh} == {0}


def test_state_retention_per_row_kind(plans):
    whole = _hourly("steady", 0.10, 10)
    state = COST.make_state()
    for start in range(0, len(whole), 24):
        state.update(Chunk(whole.iloc[start : start + 24].reset_index(drop=True), plans))

    kinds = state.states.take([("key", "steady")]).rows["kind"]

    # One request an hour: 24 minutes with spend in the last day, 8 days of 24 clock hours and 24 short bins.
    assert int(np.sum(kinds == 0)) == 24
    assert int(np.sum(kinds == 1)) == 8 * 24
    assert int(np.sum(kinds == 2)) == 8 * 24


def test_plan_change_is_reported(plans):
    start = T0 + 5 * DAY + 1800
    switcher = frame(_hourly("switcher", 0.05, 5), _theft("switcher", start, plan="coding"))
    whole = frame(switcher, _hourly("steady", 0.05, 5), _theft("steady", start))

    run = run_in_chunks(COST, whole, rows_at(whole, [start]), plans)

    assert run.inexact.to_dict("records") == [{"subject_type": "key", "subject": "switcher", "why": "plan_changed"}]
    expected = sorted(comparable(finding) for finding in COST.batch(whole, plans) if finding.subject == "steady")
    assert expected
    assert sorted(comparable(finding) for finding in run.findings if finding.subject == "steady") == expected


def test_late_event_is_reported(plans):
    victim = frame(_hourly("victim", 0.05, 5), _theft("victim", T0 + 5 * DAY + 1800))
    other = frame(_hourly("other", 0.05, 5))
    state = COST.make_state()
    state.update(Chunk(frame(victim.iloc[:100], other), plans))

    result = state.update(Chunk(frame(victim.iloc[[50]], victim.iloc[100:]), plans))

    assert result.inexact.to_dict("records") == [{"subject_type": "key", "subject": "victim", "why": "late_event"}]
