"""Reads and writes of decisions, findings and runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Insert, and_, func, or_, select, tuple_
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session

from detector.decisions import Decision
from detector.detectors.base import Finding
from detector.store.models import DecisionRow, FindingRow, RunRow

_DECISION_FIELDS = tuple(field.name for field in fields(Decision))
_FINDING_FIELDS = tuple(field.name for field in fields(Finding))
_FINDING_NAMESPACE = uuid.UUID("0b7d7f1e-2c55-4c1a-8b8e-9d0f3c9a51c7")
# Subjects per IN (...) query; stays under SQLite's and PostgreSQL's parameter limits.
_CHUNK = 500
# How far a change feed looks back before its cursor. A decision is stamped
# when it is inserted and becomes visible a moment later, when its transaction
# commits. Looking back keeps the next pull from missing a decision that
# committed just after the previous one.
FEED_OVERLAP = timedelta(seconds=30)


class DecisionStore:
    """The one writer of decisions. Inserts are idempotent on the decision id."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def save_decisions(self, decisions: Sequence[Decision], *, stored_at: datetime | None = None) -> int:
        """Insert decisions whose id is not stored yet; return how many were new.

        ``created_at`` is stored as ``stored_at``, by default the time of the
        insert, which change feeds go by, whatever the decision objects hold.
        """
        stored_at = stored_at or datetime.now(UTC)
        rows = [_decision_values(decision) | {"created_at": stored_at} for decision in decisions]
        return self._insert_new(DecisionRow, rows)

    def save_findings(self, findings: Sequence[Finding]) -> int:
        """Insert findings not stored yet (their id is derived from their content)."""
        rows = [_finding_values(finding) for finding in findings]
        return self._insert_new(FindingRow, rows)

    def decisions_for(self, subjects: Iterable[tuple[str, str]]) -> list[Decision]:
        """Return every stored decision on the given (subject_type, subject) pairs."""
        pairs = sorted({(kind, name.replace("\x00", "\ufffd")) for kind, name in subjects})
        found: list[Decision] = []
        with Session(self.engine) as session:
            for start in range(0, len(pairs), _CHUNK):
                chunk = pairs[start : start + _CHUNK]
                query = select(DecisionRow).where(
                    tuple_(DecisionRow.subject_type, DecisionRow.subject).in_(chunk)
                )
                found.extend(_to_decision(row) for row in session.scalars(query))
        return found

    def subjects_with_decisions(
        self, subjects: Iterable[tuple[str, str]], *, ignored_simulated_origin: str | None = None
    ) -> set[tuple[str, str]]:
        """Return those of the given (subject_type, subject) pairs that have a stored decision.

        Simulated decisions whose origin starts with ``ignored_simulated_origin``
        do not count (shadow decisions, see ``detector.shadow``).
        """
        conditions = []
        if ignored_simulated_origin is not None:
            conditions.append(~and_(DecisionRow.simulated, DecisionRow.origin.startswith(ignored_simulated_origin)))
        with Session(self.engine) as session:
            return subjects_with_rows(session, DecisionRow, subjects, *conditions)

    def findings_between(self, subjects: Iterable[tuple[str, str]], start: float, end: float) -> list[Finding]:
        """Return the stored findings of the given (subject_type, subject) pairs detected in [start, end) epoch seconds.

        Times come back at the store's microsecond precision.
        """
        pairs = sorted({(kind, name.replace("\x00", "\ufffd")) for kind, name in subjects})
        found: list[Finding] = []
        with Session(self.engine) as session:
            for first in range(0, len(pairs), _CHUNK):
                query = (
                    select(FindingRow)
                    .where(tuple_(FindingRow.subject_type, FindingRow.subject).in_(pairs[first : first + _CHUNK]))
                    .where(FindingRow.detected_at >= _utc(start), FindingRow.detected_at < _utc(end))
                )
                found.extend(_to_finding(row) for row in session.scalars(query))
        return found

    def suspensions_between(self, start: datetime, end: datetime) -> list[Decision]:
        """Return the suspensions of every subject detected in [start, end), simulated ones included."""
        query = (
            select(DecisionRow)
            .where(DecisionRow.action == "suspend")
            .where(DecisionRow.detected_at >= start, DecisionRow.detected_at < end)
        )
        with Session(self.engine) as session:
            return [_to_decision(row) for row in session.scalars(query)]

    def active_decisions(self, at: datetime | None = None, *, simulated: bool = False) -> list[Decision]:
        """Return the decisions in force at ``at`` (now by default)."""
        at = at or datetime.now(UTC)
        query = (
            select(DecisionRow)
            .where(_in_force(at))
            .where(DecisionRow.simulated == simulated)
            .order_by(DecisionRow.detected_at)
        )
        with Session(self.engine) as session:
            return [_to_decision(row) for row in session.scalars(query)]

    def changes_between(self, start: datetime, end: datetime) -> tuple[list[Decision], list[Decision]]:
        """Return the enforced decisions that came into force, and those that ended, since ``start``.

        The first list contains decisions in force at ``end`` that were stored
        or took effect after ``start - FEED_OVERLAP``; the second, decisions
        that expired in that span. A decision can so appear in two pulls
        close together: readers apply them by id.
        """
        since = start - FEED_OVERLAP
        created = (
            select(DecisionRow)
            .where(_in_force(end))
            .where(or_(DecisionRow.created_at > since, DecisionRow.detected_at > since))
            .where(DecisionRow.simulated.is_(False))
        )
        expired = (
            select(DecisionRow)
            .where(DecisionRow.expires_at > since, DecisionRow.expires_at <= end)
            .where(DecisionRow.simulated.is_(False))
        )
        with Session(self.engine) as session:
            new = [_to_decision(row) for row in session.scalars(created)]
            gone = [_to_decision(row) for row in session.scalars(expired)]
        return new, gone

    def recent_decisions(self, span: timedelta, created_since: datetime | None = None) -> list[Decision]:
        """Return the decisions detected within ``span`` before the newest one, oldest first.

        With ``created_since``, only decisions stored from then on, and the
        newest is taken among those.
        """
        filters = [DecisionRow.created_at >= created_since] if created_since is not None else []
        with Session(self.engine) as session:
            newest = session.scalar(select(func.max(DecisionRow.detected_at)).where(*filters))
            if newest is None:
                return []
            query = (
                select(DecisionRow)
                .where(*filters, DecisionRow.detected_at >= newest - span)
                .order_by(DecisionRow.detected_at, DecisionRow.id)
            )
            return [_to_decision(row) for row in session.scalars(query)]

    def all_decisions(self) -> list[Decision]:
        """Return every stored decision, oldest detection first."""
        with Session(self.engine) as session:
            query = select(DecisionRow).order_by(DecisionRow.detected_at, DecisionRow.id)
            return [_to_decision(row) for row in session.scalars(query)]

    def record_run(self, **values: Any) -> int:
        """Store one scoring run's summary and return its id."""
        with Session(self.engine) as session, session.begin():
            run = RunRow(**values)
            session.add(run)
            session.flush()
            return run.id

    def _insert_new(self, table: type, rows: list[dict[str, Any]]) -> int:
        """Insert rows whose id is not stored; return how many that was.

        Ids already stored are looked up first, because drivers do not report
        reliable row counts for bulk inserts. The insert itself still ignores
        duplicates, so two writers racing on one id store it once.
        """
        if not rows:
            return 0
        inserted = 0
        statement = self._insert_ignoring_duplicates(table)
        with self.engine.begin() as connection:
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                ids = [row["id"] for row in chunk]
                stored = set(connection.scalars(select(table.id).where(table.id.in_(ids))))
                fresh = list({row["id"]: row for row in chunk if row["id"] not in stored}.values())
                if fresh:
                    connection.execute(statement, fresh)
                    inserted += len(fresh)
        return inserted

    def _insert_ignoring_duplicates(self, table: type) -> Insert:
        name = self.engine.dialect.name
        if name == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=["id"])
        if name == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=["id"])
        if name in ("mysql", "mariadb"):
            return mysql.insert(table).prefix_with("IGNORE")
        raise NotImplementedError(f"database {name!r} is not supported; use SQLite, PostgreSQL or MariaDB")


def _in_force(at: datetime):
    """Return the SQL condition of ``Decision.in_force_at``."""
    started = or_(DecisionRow.detected_at <= at, DecisionRow.created_at <= at)
    return started & (DecisionRow.expires_at > at)


_TEXT_FIELDS = ("subject", "account_id", "plan")


def _without_nul(values: dict[str, Any]) -> dict[str, Any]:
    """Replace NUL characters in identifiers: PostgreSQL text cannot hold them."""
    for name in _TEXT_FIELDS:
        if "\x00" in values[name]:
            values[name] = values[name].replace("\x00", "\ufffd")
    return values


def _decision_values(decision: Decision) -> dict[str, Any]:
    # A shallow copy: ``asdict`` would deep-copy every evidence dict for nothing.
    return _without_nul({name: getattr(decision, name) for name in _DECISION_FIELDS})


def subjects_with_rows(
    session: Session, table: Any, subjects: Iterable[tuple[str, str]], *conditions: Any
) -> set[tuple[str, str]]:
    """Return those of the (subject_type, subject) pairs with a row in ``table`` that meets ``conditions``.

    ``table`` is a mapped class with ``subject_type`` and ``subject`` columns.
    Names are looked up as they are stored, with NUL replaced by U+FFFD.
    """
    stored_as = {(kind, name.replace("\x00", "\ufffd")): (kind, name) for kind, name in subjects}
    pairs = sorted(stored_as)
    found: set[tuple[str, str]] = set()
    for start in range(0, len(pairs), _CHUNK):
        query = select(table.subject_type, table.subject).distinct().where(
            tuple_(table.subject_type, table.subject).in_(pairs[start : start + _CHUNK]), *conditions
        )
        # MariaDB compares text case-insensitively by default, so only exact matches are kept.
        found.update(stored_as[tuple(pair)] for pair in session.execute(query) if tuple(pair) in stored_as)
    return found


def _to_decision(row: DecisionRow) -> Decision:
    return Decision(
        id=row.id,
        subject_type=row.subject_type,
        subject=row.subject,
        action=row.action,
        reasons=list(row.reasons),
        score=row.score,
        evidence=dict(row.evidence),
        detected_at=row.detected_at,
        created_at=row.created_at,
        expires_at=row.expires_at,
        origin=row.origin,
        simulated=row.simulated,
        scope=row.scope,
        limit_rpm=row.limit_rpm,
        account_id=row.account_id,
        plan=row.plan,
        rule=row.rule,
        extra=dict(row.extra or {}),
    )


def _to_finding(row: FindingRow) -> Finding:
    values = {name: getattr(row, name) for name in _FINDING_FIELDS}
    for name in ("detected_at", "window_start", "window_end"):
        values[name] = values[name].timestamp()
    values["evidence"] = dict(values["evidence"] or {})
    return Finding(**values)


def _utc(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, UTC)


def finding_id(finding: Finding) -> str:
    """Return the id a finding is stored under, derived from its content.

    The evidence ``kind`` is part of it where the finding has one: the rolling
    hour and the 10-minute window of abnormal_cost can cross their thresholds at
    the same request.
    """
    kind = finding.evidence.get("kind")
    parts = [finding.subject_type, finding.subject, finding.reason]
    parts += [str(kind)] if kind is not None else []
    parts += [f"{finding.detected_at:.3f}", finding.origin]
    return str(uuid.uuid5(_FINDING_NAMESPACE, "|".join(parts)))


def _finding_values(finding: Finding) -> dict[str, Any]:
    values = {name: getattr(finding, name) for name in _FINDING_FIELDS}
    values["id"] = finding_id(finding)
    for name in ("detected_at", "window_start", "window_end"):
        values[name] = datetime.fromtimestamp(values[name], UTC)
    return _without_nul(values)
