"""Replay history under a candidate policy and model, and report what would change.

With event files, both the baseline (the active model and the policy in
force) and the candidate score the same events, in memory. Without event
files, the stored findings are replayed through both policies. That covers
policy changes only, because the store keeps findings, not the events a model
scores. Nothing is stored and nothing is published either way.

``since`` counts back from the newest event or finding in the history, not
from the current time, so a log from last month replays as well as today's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from detector.decision_diff import DecisionDiff, diff_decisions
from detector.detectors import Finding
from detector.model_registry import ModelError, load_model
from detector.model_switch import load_active_model
from detector.pipeline import default_detectors, score_events
from detector.plans import load_plans
from detector.policy import decide, load_policy
from detector.policy.config import parse_duration
from detector.readers import read_events
from detector.store import DecisionStore, open_store
from detector.store.models import FindingRow


class BacktestError(RuntimeError):
    """Raised when a backtest cannot run; the message gives the cause and the fix."""


@dataclass(slots=True)
class BacktestOptions:
    """The history to replay and the candidate policy and model to replay it with."""

    paths: Sequence[Path] = ()
    policy: Path | None = None
    baseline_policy: Path | None = None
    model_version: str | None = None
    since: str = "7d"
    database_url: str | None = None
    plans: Path | None = None


@dataclass(slots=True)
class BacktestReport:
    """The diff, the names of both sides, and the history window replayed."""

    diff: DecisionDiff
    baseline: str
    candidate: str
    source: str
    window_start: datetime | None
    window_end: datetime | None


def run_backtest(options: BacktestOptions) -> BacktestReport:
    """Replay the last ``options.since`` of history; see the module docstring."""
    span = parse_duration(options.since, "--since")
    store = open_store(options.database_url)
    baseline_policy = load_policy(options.baseline_policy)
    candidate_policy = load_policy(options.policy) if options.policy else baseline_policy
    if options.paths:
        return _replay_events(options, store, span, baseline_policy, candidate_policy)
    if options.model_version:
        raise BacktestError(
            "--model needs event files: the store keeps findings and decisions, not the events a model scores; "
            "pass the gateway logs, e.g. `fairuse backtest --model V --since 7d events.jsonl`"
        )
    return _replay_findings(store, span, baseline_policy, candidate_policy)


def _replay_events(options, store, span, baseline_policy, candidate_policy) -> BacktestReport:
    frame = read_events(options.paths).frame
    if frame.empty:
        raise BacktestError(f"no valid events in {', '.join(map(str, options.paths))}; check them with `fairuse score`")
    newest = float(frame["ts"].max())
    frame = frame[frame["ts"] >= newest - span.total_seconds()].reset_index(drop=True)
    plans = load_plans(options.plans)

    try:
        active = load_active_model(store)
    except ModelError:
        active = None
    try:
        candidate_model = load_model(version=options.model_version) if options.model_version else active
    except ModelError as error:
        raise BacktestError(str(error)) from error

    baseline = _score(frame, plans, baseline_policy, active)
    candidate = _score(frame, plans, candidate_policy, candidate_model)
    return BacktestReport(
        diff=diff_decisions(baseline, candidate),
        baseline=_label(active, baseline_policy),
        candidate=_label(candidate_model, candidate_policy),
        source=f"{len(frame):,} events",
        window_start=_time(float(frame["ts"].min())),
        window_end=_time(newest),
    )


def _score(frame: pd.DataFrame, plans, policy, model):
    result = score_events(frame, plans=plans, policy=policy, detectors=default_detectors(model), simulated=True)
    return result.decisions


def _replay_findings(store: DecisionStore, span: timedelta, baseline_policy, candidate_policy) -> BacktestReport:
    with Session(store.engine) as session:
        newest = session.scalar(select(func.max(FindingRow.detected_at)))
        if newest is None:
            raise BacktestError("no findings stored to replay; score some traffic first, or pass event files")
        newest = newest.replace(tzinfo=UTC) if newest.tzinfo is None else newest
        rows = session.scalars(select(FindingRow).where(FindingRow.detected_at >= newest - span)).all()
        findings = [_to_finding(row) for row in rows]

    baseline = decide(findings, baseline_policy, simulated=True).decisions
    candidate = decide(findings, candidate_policy, simulated=True).decisions
    return BacktestReport(
        diff=diff_decisions(baseline, candidate),
        baseline=baseline_policy.origin,
        candidate=candidate_policy.origin,
        source=f"{len(findings):,} stored findings",
        window_start=newest - span,
        window_end=newest,
    )


def _to_finding(row: FindingRow) -> Finding:
    return Finding(
        subject_type=row.subject_type,
        subject=row.subject,
        account_id=row.account_id,
        plan=row.plan,
        reason=row.reason,
        score=row.score,
        impact=row.impact,
        detected_at=row.detected_at.timestamp(),
        window_start=row.window_start.timestamp(),
        window_end=row.window_end.timestamp(),
        origin=row.origin,
        evidence=dict(row.evidence),
    )


def _label(model, policy) -> str:
    return f"{'iforest-' + model.version if model else 'no model'} + {policy.origin}"


def _time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
