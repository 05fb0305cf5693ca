"""Staff actions: each one is stored, audited and published to Redis in one step.

Every action runs in one database transaction. The new or lifted decisions
are published to Redis (``workers.publish``), in one MULTI/EXEC, before the
transaction commits. So when Redis does not take them, nothing is stored and
the staff member gets the error. Each action writes one ``audit_records`` row with the staff
member, the time, the action, the comment saying why, and the subject's
state before and after: its case status, its decisions in force and whether
it is allowlisted.

Staff decisions are ordinary decision records with ``origin`` set to
``staff:NAME``. Lifting a decision sets its expiry to the moment of the lift,
the one change a stored decision ever gets, and withdraws it from Redis.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import Engine, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from detector.decisions import LIFTED, MAX_LIMIT_RPM, SCOPES, Decision
from detector.review.cases import link_decision, new_case, open_case_for, shown_id, staff_subject
from detector.review.errors import (
    ConflictError, NotFoundError, PublishError, ResolvedCaseError, ReviewError, StaleCaseError,
)
from detector.review.records import decision_from_row, decision_row
from detector.store.models import DecisionRow, LabelRow
from detector.store.review_models import AllowlistRow, AuditRow, CaseDecisionRow, CaseRow, NoteRow
from workers.publish import DecisionPublisher

logger = logging.getLogger(__name__)

MIN_DURATION = timedelta(minutes=1)
MAX_DURATION = timedelta(days=3650)
ENFORCING = ("throttle", "suspend")
RESOLVING = ("suspend", "throttle", "dismiss", "allowlist")
# A step resolves one claimed case inside the action's transaction.
Step = Callable[[Session, datetime, "_Changes", CaseRow], Any]


@dataclass(slots=True)
class _Changes:
    """Decisions an action created or lifted, published when the action's transaction is about to commit."""

    new: list[Decision] = field(default_factory=list)
    lifted: list[Decision] = field(default_factory=list)


class StaffActions:
    """The actions staff take on cases, decisions and the allowlist."""

    def __init__(self, engine: Engine, publisher: DecisionPublisher) -> None:
        self.engine = engine
        self.publisher = publisher

    # Cases ---------------------------------------------------------------------

    def open_case(self, subject_type: str, subject: str, *, staff: str, comment: str) -> CaseRow:
        """Open a case by hand; a subject with an open case keeps that one."""
        subject = staff_subject(subject_type, subject)
        try:
            with self._transaction() as (session, now, _changes):
                case = open_case_for(session, subject_type, subject)
                if case is not None:
                    raise ConflictError(_already_open(subject_type, subject, case.id))
                before = _state(session, subject_type, subject, now)
                case = new_case(session, subject_type, subject, opened_by=f"staff:{staff}", now=now)
                _audit(session, now, staff, "open_case", case, comment, before)
                return case
        except IntegrityError as error:
            # Another process opened a case on this subject between the check and the insert.
            with Session(self.engine) as session:
                case = open_case_for(session, subject_type, subject)
            logger.info("opening a case on %s %s raced with another; keeping case %s", subject_type, shown_id(subject),
                        case.id if case else None)
            raise ConflictError(_already_open(subject_type, subject, case.id if case else "")) from error

    def suspend(
        self, case_id: int, *, staff: str, duration: timedelta, comment: str, seen: datetime | None = None
    ) -> Decision:
        """Confirm the case as abuse and suspend its subject for ``duration``.

        With ``seen``, the case's ``updated_at`` as the staff member saw it,
        the action is rejected when the case changed since (see ``StaleCaseError``).
        The other resolving actions take ``seen`` too.
        """
        step = self._step("suspend", staff=staff, comment=comment, duration=duration)
        return self._resolve_all([case_id], step, _seen_of(case_id, seen))[0]

    def throttle(
        self, case_id: int, *, staff: str, limit_rpm: int, duration: timedelta, comment: str, scope: str = "all",
        seen: datetime | None = None,
    ) -> Decision:
        """Confirm the case as abuse and throttle its subject to ``limit_rpm`` requests per minute."""
        step = self._step("throttle", staff=staff, comment=comment, duration=duration, limit_rpm=limit_rpm, scope=scope)
        return self._resolve_all([case_id], step, _seen_of(case_id, seen))[0]

    def dismiss(self, case_id: int, *, staff: str, comment: str, seen: datetime | None = None) -> list[Decision]:
        """Close the case as a false positive and lift its subject's throttles and suspensions; return those lifted."""
        step = self._step("dismiss", staff=staff, comment=comment)
        return self._resolve_all([case_id], step, _seen_of(case_id, seen))[0]

    def allowlist_case(
        self, case_id: int, *, staff: str, duration: timedelta, comment: str, seen: datetime | None = None
    ) -> AllowlistRow:
        """Close the case as a false positive and allowlist its subject for ``duration``."""
        step = self._step("allowlist", staff=staff, comment=comment, duration=duration)
        return self._resolve_all([case_id], step, _seen_of(case_id, seen))[0]

    def resolve_cases(
        self, case_ids: Sequence[int], action: str, *, staff: str, comment: str, duration: timedelta | None = None,
        limit_rpm: int | None = None, scope: str = "all", seen: Mapping[int, datetime] | None = None,
    ) -> list[int]:
        """Resolve every case in ``case_ids`` with one action, all or none; return the distinct ids resolved.

        Every case is checked first. When any of them is unknown or already
        resolved, or changed after the ``updated_at`` that ``seen`` gives for
        it, nothing is changed and the error names each such case.
        """
        ids = list(dict.fromkeys(case_ids))
        if not ids:
            raise ReviewError("no case given; name the cases to resolve")
        step = self._step(action, staff=staff, comment=comment, duration=duration, limit_rpm=limit_rpm, scope=scope)
        self._resolve_all(ids, step, seen or {})
        return ids

    def add_note(self, case_id: int, *, staff: str, body: str) -> NoteRow:
        """Add a note to a case, open or resolved."""
        if not body.strip():
            raise ReviewError("empty note; write the note text")
        with self._transaction() as (session, now, _changes):
            case = _case(session, case_id)
            before = _state(session, case.subject_type, case.subject, now)
            note = NoteRow(case_id=case.id, staff=staff, body=body.strip(), created_at=now)
            session.add(note)
            case.updated_at = now
            _audit(session, now, staff, "note", case, body.strip(), before)
            return note

    # Decisions -----------------------------------------------------------------

    def add_decision(
        self, subject_type: str, subject: str, action: str, *, staff: str, duration: timedelta, comment: str,
        limit_rpm: int | None = None, scope: str = "all",
    ) -> Decision:
        """Store and publish a staff decision on any subject; it joins the subject's open case if there is one."""
        subject = staff_subject(subject_type, subject)
        if action not in ("review", "throttle", "suspend"):
            raise ReviewError(f"invalid action {action!r}; expected review, throttle or suspend")
        if action == "throttle":
            _check_limit(limit_rpm)
        if scope not in SCOPES:
            raise ReviewError(f"invalid scope {scope!r}; expected one of {', '.join(SCOPES)}")
        _require_comment(comment)
        _check_duration(duration)
        with self._transaction() as (session, now, changes):
            case = open_case_for(session, subject_type, subject)
            before = _state(session, subject_type, subject, now)
            decision = _staff_decision(subject_type, subject, action, staff, comment, now, duration, case,
                                       limit_rpm=limit_rpm if action == "throttle" else None, scope=scope)
            session.add(decision_row(decision))
            if case is not None:
                link_decision(session, case, decision, now)
            changes.new.append(decision)
            _audit(session, now, staff, "add_decision", case, comment, before, decision=decision,
                   subject=(subject_type, subject))
            return decision

    def lift(self, decision_id: str, *, staff: str, comment: str) -> Decision:
        """End a decision in force now and withdraw it from Redis; return it as it was before."""
        _require_comment(comment)
        with self._transaction() as (session, now, changes):
            row = session.get(DecisionRow, decision_id)
            if row is None:
                raise NotFoundError(f"decision {decision_id!r} not found; list decisions with 'fairuse decisions list'")
            if row.simulated or not decision_from_row(row).in_force_at(now):
                raise ReviewError(f"decision {decision_id} is not in force, so there is nothing to lift")
            case = _case_of_decision(session, decision_id) or open_case_for(session, row.subject_type, row.subject)
            _touch(case, now)
            before = _state(session, row.subject_type, row.subject, now)
            lifted = decision_from_row(row)
            _end_by_staff(row, now)
            changes.lifted.append(lifted)
            _audit(session, now, staff, "lift", case, comment, before, decision=lifted,
                   subject=(row.subject_type, row.subject))
            return lifted

    # Allowlist -----------------------------------------------------------------

    def add_allowlist(
        self, subject_type: str, subject: str, *, staff: str, duration: timedelta, comment: str
    ) -> AllowlistRow:
        """Allowlist a subject for ``duration`` and lift its throttles and suspensions."""
        subject = staff_subject(subject_type, subject)
        _require_comment(comment)
        _check_duration(duration)
        with self._transaction() as (session, now, changes):
            case = open_case_for(session, subject_type, subject)
            _touch(case, now)
            before = _state(session, subject_type, subject, now)
            entry = _allowlist(session, subject_type, subject, staff, comment, now, duration)
            changes.lifted = _lift_enforcing(session, subject_type, subject, now)
            _audit(session, now, staff, "allowlist", case, comment, before, subject=(subject_type, subject))
            return entry

    def remove_allowlist(self, entry_id: int, *, staff: str, comment: str) -> AllowlistRow:
        """End an allowlist entry now."""
        _require_comment(comment)
        with self._transaction() as (session, now, _changes):
            entry = session.get(AllowlistRow, entry_id)
            if entry is None or entry.removed_at is not None or entry.expires_at <= now:
                raise NotFoundError(f"allowlist entry {entry_id} not found or already ended; see 'fairuse allowlist list'")
            case = open_case_for(session, entry.subject_type, entry.subject)
            _touch(case, now)
            before = _state(session, entry.subject_type, entry.subject, now)
            entry.removed_at = now
            entry.removed_by = staff
            _audit(session, now, staff, "unallowlist", case, comment, before, subject=(entry.subject_type, entry.subject))
            return entry

    # Steps shared by the actions -------------------------------------------------

    def _step(self, action: str, *, staff: str, comment: str, duration: timedelta | None = None,
              limit_rpm: int | None = None, scope: str = "all") -> Step:
        """Check an action's arguments and return the step that applies it to one case."""
        if action not in RESOLVING:
            raise ReviewError(f"invalid action {action!r}; expected one of {', '.join(RESOLVING)}")
        _require_comment(comment)
        if action != "dismiss":
            if duration is None:
                raise ReviewError(f"{action} needs a duration, like 6h or 30d")
            _check_duration(duration)
        if action == "throttle":
            _check_limit(limit_rpm)
        # Suspensions take the scope too, so an unknown one would store a decision that gateways ignore.
        if action in ENFORCING and scope not in SCOPES:
            raise ReviewError(f"invalid scope {scope!r}; expected one of {', '.join(SCOPES)}")

        def enforce(session: Session, now: datetime, changes: _Changes, case: CaseRow) -> Decision:
            return _enforce(session, now, changes, case, action, staff=staff, comment=comment, duration=duration,
                            limit_rpm=limit_rpm if action == "throttle" else None, scope=scope)

        def dismiss(session: Session, now: datetime, changes: _Changes, case: CaseRow) -> list[Decision]:
            return _dismiss(session, now, changes, case, staff=staff, comment=comment)

        def allowlist(session: Session, now: datetime, changes: _Changes, case: CaseRow) -> AllowlistRow:
            return _allowlist_case(session, now, changes, case, staff=staff, comment=comment, duration=duration)

        return {"dismiss": dismiss, "allowlist": allowlist}.get(action, enforce)

    def _resolve_all(self, case_ids: list[int], step: Step, seen: Mapping[int, datetime]) -> list[Any]:
        """Claim every case, then resolve each with ``step``, in one transaction.

        ``seen`` maps case ids to their ``updated_at`` as last shown.
        """
        with self._transaction() as (session, now, changes):
            _claim_open_cases(session, case_ids, now, seen)
            return [step(session, now, changes, session.get(CaseRow, case_id)) for case_id in case_ids]

    @contextmanager
    def _transaction(self) -> Iterator[tuple[Session, datetime, _Changes]]:
        """Run an action in one transaction and publish its changes just before the commit."""
        now = datetime.now(UTC)
        changes = _Changes()
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session, now, changes
            session.flush()
            self._publish(changes, now)

    def _publish(self, changes: _Changes, now: datetime) -> None:
        try:
            self.publisher.apply(changes.new, changes.lifted, now=now)
        except redis.RedisError as error:
            logger.error("staff action not published, rolled back: %s", error)
            raise PublishError(
                f"Redis did not take the change ({error}); nothing was stored. Check that Redis is running and retry"
            ) from error


def _staff_decision(
    subject_type: str, subject: str, action: str, staff: str, comment: str, now: datetime, duration: timedelta,
    case: CaseRow | None, *, limit_rpm: int | None, scope: str,
) -> Decision:
    return Decision(
        id=str(uuid.uuid4()), subject_type=subject_type, subject=subject, action=action,
        reasons=list(case.reasons) if case and case.reasons else ["manual"],
        score=case.score if case else 0.0,
        evidence={"comment": comment, "case_id": case.id if case else None},
        detected_at=now, created_at=now, expires_at=now + duration, origin=f"staff:{staff}",
        scope=scope, limit_rpm=limit_rpm, account_id=case.account_id if case else "",
        plan=case.plan if case else "", rule="", extra={"case_id": case.id} if case else {},
    )


def _require_comment(comment: str) -> None:
    if not comment or not comment.strip():
        raise ReviewError("missing comment; say why, it is kept in the audit record")


def _check_limit(limit_rpm: object) -> None:
    if limit_rpm is None:
        raise ReviewError(f"a throttle needs --limit-rpm, a whole number of requests per minute from 1 to {MAX_LIMIT_RPM:,}")
    if isinstance(limit_rpm, bool) or not isinstance(limit_rpm, int) or not 1 <= limit_rpm <= MAX_LIMIT_RPM:
        raise ReviewError(
            f"invalid limit {shown_id(str(limit_rpm))}; give a whole number of requests per minute "
            f"from 1 to {MAX_LIMIT_RPM:,}"
        )


def _check_duration(duration: timedelta) -> None:
    if not MIN_DURATION <= duration <= MAX_DURATION:
        raise ReviewError(f"invalid duration {duration}; give between 1 minute and 10 years, like '6h' or '7d'")


def _case(session: Session, case_id: int) -> CaseRow:
    case = session.get(CaseRow, case_id)
    if case is None:
        raise NotFoundError(f"case {case_id} not found; list cases with 'fairuse review list'")
    return case


def _claim_open_cases(session: Session, case_ids: list[int], now: datetime, seen: Mapping[int, datetime]) -> None:
    """Take the row lock of every case that is still open, or raise naming each case that is not.

    The conditional update is the transaction's first statement, so two staff
    members acting on one case at once queue on the row (PostgreSQL, MariaDB)
    or on the database (SQLite), and the later one finds the case resolved.
    Cases are claimed in id order, so two bulk actions take their case locks in the same order.
    A case in ``seen`` must also still have the ``updated_at`` given there.
    """
    problems = []
    for case_id in sorted(case_ids):
        conditions = [CaseRow.id == case_id, CaseRow.status == "open"]
        if case_id in seen:
            conditions.append(CaseRow.updated_at == seen[case_id])
        claimed = session.execute(
            update(CaseRow).where(*conditions).values(updated_at=now).execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:
            problems.append(case_id)
    if not problems:
        return
    found = {case_id: session.get(CaseRow, case_id) for case_id in problems}
    changed = [case_id for case_id in problems if found[case_id] is not None and found[case_id].status == "open"]
    if len(case_ids) == 1 and changed:
        _raise_stale(found[changed[0]])
    if len(case_ids) == 1 and found[problems[0]] is not None:
        _raise_resolved(found[problems[0]])
    reasons = [_why_not_open(case_id, found[case_id]) for case_id in problems]
    message = "; ".join(reasons) + ("; nothing was changed" if len(case_ids) > 1 else "")
    if changed:
        raise ConflictError(f"{message}. Reload the page and act again")
    if all(case is None for case in found.values()):
        raise NotFoundError(f"{message}. List cases with 'fairuse review list'")
    raise ConflictError(f"{message}. Open a new case to act again")


def _seen_of(case_id: int, seen: datetime | None) -> dict[int, datetime]:
    """Return the ``seen`` mapping of one case's action: empty when the caller gave no time."""
    return {} if seen is None else {case_id: seen}


def _touch(case: CaseRow | None, now: datetime) -> None:
    """Mark a case changed, so that an action from a page opened before gets ``StaleCaseError``.

    Callers touch the case before changing decisions, so the case row is locked
    first, in the order that ``_claim_open_cases`` uses.
    """
    if case is not None:
        case.updated_at = now


def _raise_resolved(case: CaseRow) -> None:
    raise ResolvedCaseError(case.id, case.resolved_by or "unknown", _utc_text(case.resolved_at), case.resolution)


def _raise_stale(case: CaseRow) -> None:
    raise StaleCaseError(case.id, _utc_text(case.updated_at))


def _why_not_open(case_id: int, case: CaseRow | None) -> str:
    if case is None:
        return f"case {case_id} not found"
    if case.status == "open":
        return f"case {case_id} changed at {_utc_text(case.updated_at)}, after the page was loaded"
    return (f"case {case_id} was already resolved by {case.resolved_by or 'unknown'} at {_utc_text(case.resolved_at)} "
            f"({case.resolution})")


def _utc_text(moment: datetime | None) -> str:
    """Return a stored time as ``YYYY-MM-DD HH:MM:SS UTC`` for an error message."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "an unknown time"


def _enforce(session: Session, now: datetime, changes: _Changes, case: CaseRow, action: str, *, staff: str,
             comment: str, duration: timedelta, limit_rpm: int | None, scope: str) -> Decision:
    before = _state(session, case.subject_type, case.subject, now)
    decision = _staff_decision(case.subject_type, case.subject, action, staff, comment, now, duration, case,
                               limit_rpm=limit_rpm, scope=scope)
    session.add(decision_row(decision))
    link_decision(session, case, decision, now)
    changes.new.append(decision)
    _label(session, case, "abuse", staff, comment, now)
    _resolve(case, "suspended" if action == "suspend" else "throttled", staff, now)
    _audit(session, now, staff, action, case, comment, before, decision=decision)
    return decision


def _dismiss(session: Session, now: datetime, changes: _Changes, case: CaseRow, *, staff: str,
             comment: str) -> list[Decision]:
    before = _state(session, case.subject_type, case.subject, now)
    lifted = _lift_enforcing(session, case.subject_type, case.subject, now)
    changes.lifted.extend(lifted)
    _label(session, case, "benign", staff, comment, now)
    _resolve(case, "dismissed", staff, now)
    _audit(session, now, staff, "dismiss", case, comment, before)
    return lifted


def _allowlist_case(session: Session, now: datetime, changes: _Changes, case: CaseRow, *, staff: str,
                    comment: str, duration: timedelta) -> AllowlistRow:
    before = _state(session, case.subject_type, case.subject, now)
    entry = _allowlist(session, case.subject_type, case.subject, staff, comment, now, duration)
    changes.lifted.extend(_lift_enforcing(session, case.subject_type, case.subject, now))
    _label(session, case, "benign", staff, comment, now)
    _resolve(case, "allowlisted", staff, now)
    _audit(session, now, staff, "allowlist", case, comment, before)
    return entry


def _case_of_decision(session: Session, decision_id: str) -> CaseRow | None:
    return session.scalar(
        select(CaseRow).join(CaseDecisionRow, CaseDecisionRow.case_id == CaseRow.id)
        .where(CaseDecisionRow.decision_id == decision_id)
    )


def _in_force(session: Session, subject_type: str, subject: str, now: datetime) -> list[DecisionRow]:
    rows = session.scalars(
        select(DecisionRow)
        .where(DecisionRow.subject_type == subject_type, DecisionRow.subject == subject)
        .where(DecisionRow.simulated.is_(False), DecisionRow.expires_at > now)
        .where(or_(DecisionRow.detected_at <= now, DecisionRow.created_at <= now))
        .order_by(DecisionRow.detected_at)
    )
    # MariaDB compares text case-insensitively by default; keep exact matches only.
    return [row for row in rows if row.subject == subject]


def _lift_enforcing(session: Session, subject_type: str, subject: str, now: datetime) -> list[Decision]:
    lifted = []
    for row in _in_force(session, subject_type, subject, now):
        if row.action in ENFORCING:
            lifted.append(decision_from_row(row))
            _end_by_staff(row, now)
    return lifted


def _end_by_staff(row: DecisionRow, now: datetime) -> None:
    """End a decision now, marked as lifted so that policy does not count it as an earlier offence."""
    row.expires_at = now
    row.extra = {**(row.extra or {}), LIFTED: now.isoformat().replace("+00:00", "Z")}


def _allowlist(session: Session, subject_type: str, subject: str, staff: str, comment: str, now: datetime,
               duration: timedelta) -> AllowlistRow:
    entry = AllowlistRow(subject_type=subject_type, subject=subject, comment=comment.strip(), staff=staff,
                         created_at=now, expires_at=now + duration, removed_by="")
    session.add(entry)
    return entry


def _label(session: Session, case: CaseRow, verdict: str, staff: str, comment: str, now: datetime) -> None:
    """Store the verdict on the case's highest-scoring policy decision, the one retraining learns from."""
    judged = session.scalar(
        select(DecisionRow)
        .join(CaseDecisionRow, CaseDecisionRow.decision_id == DecisionRow.id)
        .where(CaseDecisionRow.case_id == case.id, DecisionRow.origin.not_like("staff:%"))
        .order_by(DecisionRow.score.desc(), DecisionRow.detected_at.desc())
        .limit(1)
    )
    session.add(LabelRow(
        subject_type=case.subject_type, subject=case.subject, verdict=verdict,
        reasons=list(judged.reasons) if judged else list(case.reasons),
        decision_id=judged.id if judged else None, staff=staff, comment=comment.strip(), created_at=now,
    ))


def _already_open(subject_type: str, subject: str, case_id: int | str) -> str:
    return f"{subject_type} {shown_id(subject)} already has open case {case_id}; act on that one"


def _resolve(case: CaseRow, resolution: str, staff: str, now: datetime) -> None:
    case.status = "resolved"
    case.open_subject = None
    case.resolution = resolution
    case.resolved_by = staff
    case.resolved_at = now
    case.updated_at = now


def _state(session: Session, subject_type: str, subject: str, now: datetime) -> dict[str, Any]:
    """Return what an action can change about a subject: its case, decisions in force and allowlisting."""
    session.flush()
    case = open_case_for(session, subject_type, subject)
    allowlisted = session.scalars(
        select(AllowlistRow.subject).where(
            AllowlistRow.subject_type == subject_type, AllowlistRow.subject == subject,
            AllowlistRow.removed_at.is_(None), AllowlistRow.created_at <= now, AllowlistRow.expires_at > now,
        )
    )
    return {
        "open_case": case.id if case else None,
        "in_force": [_summary(decision_from_row(row)) for row in _in_force(session, subject_type, subject, now)],
        # MariaDB compares text case-insensitively by default; keep exact matches only.
        "allowlisted": subject in allowlisted,
    }


def _summary(decision: Decision) -> dict[str, Any]:
    return {
        "id": decision.id, "action": decision.action, "scope": decision.scope, "limit_rpm": decision.limit_rpm,
        "origin": decision.origin, "expires_at": decision.expires_at.isoformat().replace("+00:00", "Z"),
    }


def _audit(
    session: Session, now: datetime, staff: str, action: str, case: CaseRow | None, reason: str,
    before: dict[str, Any], *, decision: Decision | None = None, subject: tuple[str, str] | None = None,
) -> None:
    subject_type, subject_id = subject or (case.subject_type, case.subject)
    after = _state(session, subject_type, subject_id, now)
    if case is not None:
        after["case"] = {"id": case.id, "status": case.status, "resolution": case.resolution}
    session.add(AuditRow(
        created_at=now, staff=staff, action=action, subject_type=subject_type, subject=subject_id,
        case_id=case.id if case else None, decision_id=decision.id if decision else None,
        reason=reason.strip(), before=before, after=after,
    ))
