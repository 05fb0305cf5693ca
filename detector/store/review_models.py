"""Tables of the staff review console: cases, notes, audit, staff, sessions, allowlist, activity.

Staff verdicts live in ``labels`` (``LabelRow`` in ``detector.store.models``),
which the retraining helper reads; everything else the console writes is here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from detector.store.models import Base, UTCDateTime, exact_text


# Cases and what staff wrote on them ------------------------------------------


class CaseRow(Base):
    """A subject waiting for, or given, a staff verdict."""

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_type: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(exact_text(512))
    account_id: Mapped[str] = mapped_column(String(512), default="")
    plan: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[str] = mapped_column(String(16), default="open")
    # The highest decision score and the union of reason codes of the linked decisions.
    score: Mapped[float] = mapped_column(Float, default=0.0)
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    # "policy" for cases opened by review decisions, "staff:NAME" for cases opened by hand.
    opened_by: Mapped[str] = mapped_column(String(256))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolution: Mapped[str] = mapped_column(String(32), default="")
    resolved_by: Mapped[str] = mapped_column(String(128), default="")
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # SHA-256 of the subject while the case is open, NULL once resolved. Its
    # unique index lets only one open case per subject exist, across processes.
    open_subject: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)

    __table_args__ = (
        Index("ix_cases_status_score", "status", "score"),
        Index("ix_cases_subject", "subject_type", "subject"),
        Index("ux_cases_open_subject", "open_subject", unique=True),
    )


class CaseDecisionRow(Base):
    """A decision shown on a case. A decision belongs to one case at most."""

    __tablename__ = "case_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    decision_id: Mapped[str] = mapped_column(String(36), unique=True)


class NoteRow(Base):
    __tablename__ = "case_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    staff: Mapped[str] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditRow(Base):
    """One staff action: who, when, what, why, and the state before and after."""

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    staff: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    subject_type: Mapped[str] = mapped_column(String(16), default="")
    subject: Mapped[str] = mapped_column(exact_text(512), default="")
    case_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    decision_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    before: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# Staff accounts and their console sessions ------------------------------------


class StaffRow(Base):
    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # An Argon2id hash in PHC string form; the password itself is never stored.
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    # "en" or "zh_CN"; empty means: follow the browser's Accept-Language.
    language: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class StaffSessionRow(Base):
    __tablename__ = "staff_sessions"

    # SHA-256 of the session cookie; the cookie value itself is never stored.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ConsoleSettingRow(Base):
    """Console-wide values kept across restarts, such as the address pseudonym key."""

    __tablename__ = "console_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


# Staff allowlist, honoured by policy when scoring ------------------------------


class AllowlistRow(Base):
    __tablename__ = "allowlist_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_type: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(exact_text(512))
    comment: Mapped[str] = mapped_column(Text, default="")
    staff: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    removed_by: Mapped[str] = mapped_column(String(128), default="")
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_allowlist_subject", "subject_type", "subject"),)


# Hourly activity of subjects under review, for the case page's charts --------


class ActivityRow(Base):
    """One subject's requests in one clock hour, as counts only (no addresses)."""

    __tablename__ = "subject_activity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_type: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(exact_text(512))
    hour: Mapped[datetime] = mapped_column(UTCDateTime)
    requests: Mapped[int] = mapped_column(Integer)
    cost: Mapped[float] = mapped_column(Float)
    networks: Mapped[int] = mapped_column(Integer)
    countries: Mapped[int] = mapped_column(Integer)
    user_agents: Mapped[int] = mapped_column(Integer)
    # Counts of gaps between consecutive requests, by the bins in detector.review.activity.
    gaps: Mapped[list[int]] = mapped_column(JSON)

    __table_args__ = (
        UniqueConstraint("subject_type", "subject", "hour", name="uq_subject_activity_hour"),
        Index("ix_subject_activity_hour", "hour"),
    )
