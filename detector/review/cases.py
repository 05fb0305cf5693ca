"""The case queue: cases opened by review decisions or by staff, with filters and sorting.

Review decisions become cases lazily: ``sync`` links every enforced review
decision not yet linked to a case to the subject's open case, opening one when
there is none. It takes decisions still in force, and decisions written in
the last ``RECENT`` even when they already expired, so a batch run over an
old log still fills the queue. The console and the CLI call it before
listing, so a review decision from any writer (batch runs, stream workers,
RQ jobs) shows up without a hook in each of them.
"""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from detector.decisions import SUBJECT_TYPES, Decision
from detector.readers.checks import normalize_ip
from detector.review.errors import NotFoundError, ReviewError
from detector.store.models import DecisionRow, LabelRow
from detector.review.records import decision_from_row
from detector.review.vocabulary import CASE_STATUSES
from detector.store.review_models import AuditRow, AllowlistRow, CaseDecisionRow, CaseRow, NoteRow

logger = logging.getLogger(__name__)

RECENT = timedelta(days=7)
MAX_SUBJECT_LENGTH = 512
# Longer ids are cut in messages, so an error stays one readable line.
SHOWN_LENGTH = 80
# Sort keys and their columns; "reason" sorts by the reason codes, in Python (see ``CaseQueue.list``).
SORT_KEYS = {
    "score": CaseRow.score,
    "reason": None,
    "age": CaseRow.opened_at,
    "plan": CaseRow.plan,
    "status": CaseRow.status,
    "updated": CaseRow.updated_at,
}


@dataclass(frozen=True, slots=True)
class CaseFilter:
    """Filter and sort order of a case listing. The default lists open cases, highest score first."""

    status: str | None = "open"
    reason: str | None = None
    plan: str | None = None
    min_score: float | None = None
    # Only cases opened at least this many hours ago (oldest waiting cases).
    min_age_hours: float | None = None
    sort: str = "score"
    descending: bool = True
    limit: int = 200

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in CASE_STATUSES:
            raise ReviewError(f"invalid status {self.status!r}; expected one of {', '.join(CASE_STATUSES)}")
        if self.sort not in SORT_KEYS:
            raise ReviewError(f"invalid sort key {self.sort!r}; expected one of {', '.join(SORT_KEYS)}")


@dataclass(slots=True)
class CaseDetail:
    """A case with everything its page shows, apart from the charts."""

    case: CaseRow
    decisions: list[Decision]
    notes: list[NoteRow]
    labels: list[LabelRow]
    audit: list[AuditRow]
    allowlist: list[AllowlistRow] = field(default_factory=list)


class CaseQueue:
    """Open, list and read cases."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def sync(self, now: datetime | None = None) -> int:
        """Link unlinked review decisions to open cases; return how many cases were opened."""
        now = now or datetime.now(UTC)
        linked = select(CaseDecisionRow.decision_id)
        query = (
            select(DecisionRow)
            .where(DecisionRow.action == "review", DecisionRow.simulated.is_(False))
            .where(DecisionRow.detected_at <= now)
            .where(or_(DecisionRow.expires_at > now, DecisionRow.created_at > now - RECENT))
            .where(DecisionRow.id.not_in(linked))
            .order_by(DecisionRow.detected_at, DecisionRow.id)
        )
        opened = 0
        try:
            with Session(self.engine) as session, session.begin():
                for row in session.scalars(query).all():
                    case = open_case_for(session, row.subject_type, row.subject)
                    if case is None:
                        case = new_case(session, row.subject_type, row.subject, opened_by="policy", now=now)
                        opened += 1
                    link_decision(session, case, decision_from_row(row), now)
        except IntegrityError:
            # Another process linked the same decisions at the same time; its cases stand.
            logger.info("case sync raced with another process; keeping its cases")
            return 0
        return opened

    def list(self, case_filter: CaseFilter = CaseFilter()) -> list[CaseRow]:
        """Return the cases ``case_filter`` selects, in its order, at most ``case_filter.limit``."""
        query = select(CaseRow)
        if case_filter.status:
            query = query.where(CaseRow.status == case_filter.status)
        if case_filter.plan:
            query = query.where(CaseRow.plan == case_filter.plan)
        if case_filter.min_score is not None:
            query = query.where(CaseRow.score >= case_filter.min_score)
        if case_filter.min_age_hours is not None:
            query = query.where(CaseRow.opened_at <= datetime.now(UTC) - timedelta(hours=case_filter.min_age_hours))
        # Reasons are a JSON list, which the three backends query differently, so
        # filtering and sorting by reason happen here, on every matching case.
        by_reason = case_filter.reason or case_filter.sort == "reason"
        order = SORT_KEYS[case_filter.sort] if case_filter.sort != "reason" else CaseRow.score
        query = query.order_by(order.desc() if case_filter.descending else order.asc(), CaseRow.id.desc())
        if not by_reason:
            query = query.limit(case_filter.limit)
        with Session(self.engine, expire_on_commit=False) as session:
            rows = list(session.scalars(query))
        if case_filter.reason:
            rows = [row for row in rows if case_filter.reason in row.reasons]
        if case_filter.sort == "reason":
            rows.sort(key=lambda row: ",".join(row.reasons), reverse=case_filter.descending)
        return rows[: case_filter.limit]

    def reasons_and_plans(self) -> tuple[list[str], list[str]]:
        """Return the reason codes and plans found on cases, for filter menus."""
        with Session(self.engine) as session:
            plans = sorted(set(session.scalars(select(CaseRow.plan).distinct())) - {""})
            reasons = sorted({reason for found in session.scalars(select(CaseRow.reasons)) for reason in found})
        return reasons, plans

    def get(self, case_id: int) -> CaseRow:
        with Session(self.engine, expire_on_commit=False) as session:
            case = session.get(CaseRow, case_id)
        if case is None:
            raise NotFoundError(f"case {case_id} not found; list cases with 'fairuse review list'")
        return case

    def detail(self, case_id: int) -> CaseDetail:
        """Return a case with its subject's decisions (newest first), notes, labels, audit and allowlist entries."""
        case = self.get(case_id)
        subject = (DecisionRow.subject_type == case.subject_type, DecisionRow.subject == case.subject)
        with Session(self.engine, expire_on_commit=False) as session:
            decisions = [
                decision_from_row(row)
                for row in session.scalars(select(DecisionRow).where(*subject).order_by(DecisionRow.detected_at.desc()))
            ]
            notes = list(session.scalars(select(NoteRow).where(NoteRow.case_id == case_id).order_by(NoteRow.created_at)))
            labels = list(session.scalars(
                select(LabelRow).where(LabelRow.subject_type == case.subject_type, LabelRow.subject == case.subject)
                .order_by(LabelRow.created_at.desc())
            ))
            audit = list(session.scalars(
                select(AuditRow).where(AuditRow.case_id == case_id).order_by(AuditRow.created_at.desc())
            ))
            allowlist = list(session.scalars(
                select(AllowlistRow)
                .where(AllowlistRow.subject_type == case.subject_type, AllowlistRow.subject == case.subject)
                .order_by(AllowlistRow.created_at.desc())
            ))
        # MariaDB compares text case-insensitively by default; keep exact matches only.
        return CaseDetail(
            case=case, decisions=[decision for decision in decisions if decision.subject == case.subject], notes=notes,
            labels=[label for label in labels if label.subject == case.subject], audit=audit,
            allowlist=[entry for entry in allowlist if entry.subject == case.subject],
        )


def check_subject(subject_type: str, subject: str) -> None:
    """Raise ``ReviewError`` unless the pair names a subject decisions can be made on."""
    if subject_type not in SUBJECT_TYPES:
        raise ReviewError(f"invalid subject type {shown_id(subject_type)}; expected one of {', '.join(SUBJECT_TYPES)}")
    if not subject or len(subject) > MAX_SUBJECT_LENGTH or subject != subject.strip():
        raise ReviewError(
            f"invalid subject {shown_id(subject)}; give the {subject_type} id, "
            f"1 to {MAX_SUBJECT_LENGTH} characters without surrounding spaces"
        )


def staff_subject(subject_type: str, subject: str) -> str:
    """Check a subject a staff member typed and return it as decisions store it.

    An ``ip`` subject must be an address and comes back in the spelling
    gateways look up: IPv4-mapped IPv6 as IPv4, IPv6 compressed in lower case.
    """
    check_subject(subject_type, subject)
    for position, character in enumerate(subject):
        if unicodedata.category(character) in ("Cc", "Cf"):
            raise ReviewError(
                f"invalid subject {shown_id(subject)}: character {position + 1} is the control character "
                f"U+{ord(character):04X}; give the {subject_type} id without control characters"
            )
    if subject_type != "ip":
        return subject
    canonical = normalize_ip(subject)
    if canonical is None:
        raise ReviewError(
            f"invalid ip subject {shown_id(subject)}; give an IPv4 or IPv6 address, like 203.0.113.7 or 2001:db8::7"
        )
    return canonical


def shown_id(text: str) -> str:
    """Return ``text`` quoted for a message, cut to ``SHOWN_LENGTH`` characters with its full length after.

    >>> shown_id("key-1")
    "'key-1'"
    >>> shown_id("k" * 100)[-23:]
    "kkkk'… (100 characters)"
    """
    if len(text) <= SHOWN_LENGTH:
        return repr(text)
    return f"{text[:SHOWN_LENGTH]!r}… ({len(text)} characters)"


def open_case_for(session: Session, subject_type: str, subject: str) -> CaseRow | None:
    cases = session.scalars(
        select(CaseRow)
        .where(CaseRow.subject_type == subject_type, CaseRow.subject == subject, CaseRow.status == "open")
        .order_by(CaseRow.id)
    )
    # MariaDB compares text case-insensitively by default; keep exact matches only.
    return next((case for case in cases if case.subject == subject), None)


def new_case(session: Session, subject_type: str, subject: str, *, opened_by: str, now: datetime) -> CaseRow:
    check_subject(subject_type, subject)
    case = CaseRow(
        subject_type=subject_type, subject=subject, account_id="", plan="", status="open", score=0.0, reasons=[],
        opened_by=opened_by, opened_at=now, updated_at=now, resolution="", resolved_by="",
        open_subject=open_slot(subject_type, subject),
    )
    session.add(case)
    session.flush()
    return case


def open_slot(subject_type: str, subject: str) -> str:
    """Return the value of ``cases.open_subject`` that an open case of this subject holds."""
    return hashlib.sha256(f"{subject_type}\x00{subject}".encode()).hexdigest()


def link_decision(session: Session, case: CaseRow, decision: Decision, now: datetime) -> None:
    """Attach ``decision`` to ``case`` and fold its score, reasons, account and plan into the case."""
    session.add(CaseDecisionRow(case_id=case.id, decision_id=decision.id))
    case.score = max(case.score, decision.score)
    case.reasons = sorted(set(case.reasons) | set(decision.reasons))
    case.account_id = decision.account_id or case.account_id
    case.plan = decision.plan or case.plan
    case.updated_at = now
