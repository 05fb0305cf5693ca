"""Scoring with staff review: the staff allowlist in policy, and hourly activity kept for case charts."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from detector.batch import BatchOptions, run_batch
from detector.detectors import AbnormalCostDetector
from detector.features import prepare_events
from detector.pipeline import score_events
from detector.review.activity import GAP_LABELS, ActivityLog, hourly_activity
from detector.store import open_store
from detector.store.review_models import ActivityRow
from tests.factories import DAY, HOUR, T0, events, frame


def _stolen_key_traffic():
    history = events("victim", T0 + np.arange(5 * 24) * HOUR + 60, cost=0.05)
    stolen = events("victim", T0 + 5 * DAY + 1800 + np.arange(120) * 30, cost=0.5, ip="203.0.113.9")
    quiet = events("quiet", T0 + np.array([100.0, 4000.0, 9000.0]), cost=0.01)
    return frame(history, stolen, quiet)


def test_staff_allowlist_turns_suspension_into_review(plans, policy):
    traffic = _stolen_key_traffic()

    plain = score_events(traffic, plans=plans, policy=policy, detectors=[AbnormalCostDetector()])
    allowlisted = score_events(
        traffic, plans=plans, policy=policy, detectors=[AbnormalCostDetector()],
        allowlisted=lambda subjects: {pair for pair in subjects if pair == ("key", "victim")},
    )

    assert "suspend" in {decision.action for decision in plain.decisions}
    assert {decision.action for decision in allowlisted.decisions} == {"review"}
    assert allowlisted.outcome.allowlisted > 0


def test_hourly_activity_counts(plans):
    times = T0 + np.array([0, 10, 70, 3600 + 5, 3600 + 2000])
    part = events("k", times, cost=[0.1, 0.2, 0.3, 0.4, 0.5], ip=["198.51.100.1", "198.51.100.2", "203.0.113.1",
                  "198.51.100.1", "198.51.100.1"], country=["DE", "DE", "FR", "DE", "DE"],
                  user_agent=["a", "b", "a", "a", "a"])
    other = events("other", T0 + np.array([5.0]))

    rows = hourly_activity(prepare_events(frame(part, other), plans), {("key", "k")})

    assert list(rows["subject"]) == ["k", "k"]
    assert list(rows["requests"]) == [3, 2]
    assert np.allclose(rows["cost"], [0.6, 0.9])
    assert list(rows["networks"]) == [2, 1]
    assert list(rows["countries"]) == [2, 1]
    assert list(rows["user_agents"]) == [2, 1]
    first, second = rows["gaps"]
    assert len(first) == len(GAP_LABELS)
    # Gaps of 10 s and 60 s: a bin includes its lower edge.
    assert first[GAP_LABELS.index("10-30s")] == 1
    assert first[GAP_LABELS.index("1-2m")] == 1
    assert sum(first) == 2
    assert second[GAP_LABELS.index("30m-1h")] == 2
    assert rows["hour"].iloc[0] == datetime.fromtimestamp(T0, UTC)


def test_batch_keeps_activity_of_subjects_acted_on_only(tmp_path, sqlite_url):
    source = tmp_path / "events.jsonl"
    cron = events("cron", T0 + np.arange(5 * 24) * HOUR, cost=0.01)
    frame(_stolen_key_traffic(), cron).drop(columns=["subject_type"]).to_json(source, orient="records", lines=True)

    report = run_batch(BatchOptions(paths=[source], database_url=sqlite_url, use_model=False))

    engine = open_store(sqlite_url).engine
    with Session(engine) as session:
        subjects = set(session.scalars(select(ActivityRow.subject).distinct()))
        hours = session.scalar(select(func.count()).select_from(ActivityRow))
    # The hourly cron job is found as automation but not acted on, so it has no chart.
    assert "cron" in {finding.subject for finding in report.result.findings}
    assert "cron" not in {decision.subject for decision in report.decisions}
    assert subjects == {"victim"}
    assert hours == 5 * 24 + 2
    series = ActivityLog(engine).series("key", "victim")
    # 120 hourly requests of history, then 120 requests 30 s apart over two hours.
    assert series.requests.sum() == 240
    assert series.requests.max() == 60
    assert series.hours[-1] == datetime.fromtimestamp(T0 + 5 * DAY + 3600, UTC)


def test_rescoring_replaces_hours(tmp_path, sqlite_url):
    source = tmp_path / "events.jsonl"
    _stolen_key_traffic().drop(columns=["subject_type"]).to_json(source, orient="records", lines=True)

    run_batch(BatchOptions(paths=[source], database_url=sqlite_url, use_model=False))
    run_batch(BatchOptions(paths=[source], database_url=sqlite_url, use_model=False))

    engine = open_store(sqlite_url).engine
    series = ActivityLog(engine).series("key", "victim", end=datetime.fromtimestamp(T0 + 5 * DAY + 3600, UTC))
    assert series.requests.sum() == 240
    assert series.requests.max() == 60
    assert series.cost.max() == 30.0


def test_staff_suspensions_not_counted_in_cap(tmp_path):
    from detector.decisions import Decision
    from detector.detectors import Finding
    from detector.policy import decide, load_policy

    shipped = (Path(__file__).resolve().parents[1] / "detector" / "config" / "policy.toml").read_text("utf-8")
    path = tmp_path / "policy.toml"
    path.write_text(shipped.replace("max_auto_suspensions_per_hour = 20", "max_auto_suspensions_per_hour = 1"), "utf-8")
    at = datetime.fromtimestamp(T0, UTC)
    staff_suspensions = [
        Decision(id=f"staff-{index}", subject_type="key", subject=f"other-{index}", action="suspend", reasons=["manual"],
                 score=0.0, evidence={}, detected_at=at, created_at=at, expires_at=at + timedelta(hours=6),
                 origin="staff:alice")
        for index in range(3)
    ]
    finding = Finding(subject_type="key", subject="key-1", account_id="acct", plan="text", reason="abnormal_cost",
                      score=90.0, impact=3.0, detected_at=T0 + 60, window_start=T0 - HOUR, window_end=T0 + 60,
                      origin="abnormal_cost/1", evidence={})

    outcome = decide([finding], load_policy(path), staff_suspensions, now=at)

    assert [decision.action for decision in outcome.decisions] == ["suspend"]
    assert outcome.capped == 0
