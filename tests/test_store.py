from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
from sqlalchemy import inspect

from detector.detectors import Finding
from detector.policy import decide
from detector.review.activity import GAP_LABELS, ActivityLog
from detector.store import open_store
from tests.factories import HOUR, T0

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _finding(subject="key-1", at=T0):
    return Finding(
        subject_type="key", subject=subject, account_id="acct", plan="text", reason="abnormal_cost",
        score=90.0, impact=3.0, detected_at=at, window_start=at - HOUR, window_end=at,
        origin="abnormal_cost/1", evidence={"spend_1h": 6.5, "thresholds": {"min_ratio": 8.0}},
    )


def test_migrations_create_tables(database_url):
    store = open_store(database_url)

    tables = set(inspect(store.engine).get_table_names())

    assert {"decisions", "findings", "runs", "alembic_version"} <= tables


def test_decision_round_trip_keeps_fields(database_url, policy):
    store = open_store(database_url)
    decision = decide([_finding()], policy, now=NOW).decisions[0]

    before = datetime.now(UTC)
    store.save_decisions([decision])
    loaded = store.decisions_for([("key", "key-1")])

    # created_at is the time of the insert, which change feeds go by.
    assert before <= loaded[0].created_at <= datetime.now(UTC)
    assert loaded == [replace(decision, created_at=loaded[0].created_at)]
    assert loaded[0].detected_at.tzinfo is not None
    assert loaded[0].evidence["abnormal_cost"]["spend_1h"] == 6.5


def test_saving_twice_stores_once(database_url, policy):
    store = open_store(database_url)
    decisions = decide([_finding(), _finding("key-2")], policy, now=NOW).decisions

    first = store.save_decisions(decisions)
    second = store.save_decisions(decisions)

    assert first == 2
    assert second == 0
    assert len(store.all_decisions()) == 2


def test_findings_idempotent(database_url):
    store = open_store(database_url)

    assert store.save_findings([_finding()]) == 1
    assert store.save_findings([_finding()]) == 0


def test_findings_same_time_two_kinds(database_url):
    store = open_store(database_url)
    hour = replace(_finding(), evidence={"kind": "rolling_hour"})
    minutes = replace(_finding(), evidence={"kind": "short_window"})

    assert store.save_findings([hour, minutes]) == 2
    assert store.save_findings([hour, minutes]) == 0


def test_active_decisions_by_time(store, policy):
    decision = decide([_finding()], policy, now=NOW).decisions[0]
    store.save_decisions([decision])
    during = decision.detected_at + timedelta(minutes=5)

    assert [found.id for found in store.active_decisions(during)] == [decision.id]
    assert store.active_decisions(decision.detected_at - timedelta(seconds=1)) == []
    assert store.active_decisions(decision.expires_at) == []
    assert store.active_decisions(during, simulated=True) == []


def test_open_twice_migrates_once(sqlite_url):
    open_store(sqlite_url)

    store = open_store(sqlite_url)

    assert store.all_decisions() == []


def test_recent_decisions_bounded_by_newest(database_url, policy):
    store = open_store(database_url)
    findings = [_finding("key-old", T0), _finding("key-mid", T0 + 6 * 24 * HOUR), _finding("key-new", T0 + 7 * 24 * HOUR)]
    store.save_decisions(decide(findings, policy, now=NOW).decisions)

    recent = store.recent_decisions(timedelta(days=2))

    assert {decision.subject for decision in recent} == {"key-mid", "key-new"}
    assert store.recent_decisions(timedelta(days=2), created_since=datetime.now(UTC) + timedelta(hours=1)) == []


def test_subjects_with_decisions_skip_shadow(database_url, policy):
    from detector.shadow import as_shadow, decided_without_shadow

    store = open_store(database_url)
    decisions = decide([_finding("key-1"), _finding("key-2")], policy, now=NOW).decisions
    store.save_decisions([decisions[0], as_shadow(decisions[1], "candidate")])

    subjects = [("key", "key-1"), ("key", "key-2"), ("key", "KEY-1"), ("key", "key-3")]

    assert store.subjects_with_decisions(subjects) == {("key", "key-1"), ("key", "key-2")}
    assert decided_without_shadow(store, subjects) == {("key", "key-1")}


def _activity_rows(*subjects: str) -> pd.DataFrame:
    hour = datetime(2026, 12, 1, 10, tzinfo=UTC)
    return pd.DataFrame({
        "subject_type": ["key"] * len(subjects), "subject": list(subjects), "hour": [hour] * len(subjects),
        "requests": [3] * len(subjects), "cost": [1.5] * len(subjects), "networks": [1] * len(subjects),
        "countries": [1] * len(subjects), "user_agents": [1] * len(subjects), "gaps": [[0] * len(GAP_LABELS)] * len(subjects),
    })


def test_subjects_differing_in_case_stay_apart(database_url, policy):
    # Key ids are case-sensitive, while MariaDB's default collation is not: "key-a" and "KEY-A" are two keys.
    store = open_store(database_url)
    decisions = [decide([_finding(subject=name)], policy, now=NOW).decisions[0] for name in ("key-a", "KEY-A")]
    store.save_decisions(decisions)
    store.save_findings([_finding(subject="key-a"), _finding(subject="KEY-A")])
    activity = ActivityLog(store.engine)

    written = activity.store_rows(_activity_rows("key-a", "KEY-A"), now=NOW)

    assert written == 2
    assert [decision.subject for decision in store.decisions_for([("key", "key-a")])] == ["key-a"]
    found = store.findings_between([("key", "KEY-A")], T0 - 1, T0 + 1)
    assert [finding.subject for finding in found] == ["KEY-A"]
    assert activity.series("key", "key-a", end=datetime(2026, 12, 1, 10, tzinfo=UTC)).requests.sum() == 3
