"""Tables of the decision store (SQLAlchemy 2.x typed declarative models)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend, SQLite included."""

    # MySQL and MariaDB keep whole seconds unless asked for microseconds.
    impl = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; store times with a UTC offset")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def exact_text(length: int) -> String:
    """Return a text column type compared byte for byte on every backend.

    Key ids, account ids and addresses are case-sensitive: ``key-a`` and
    ``KEY-A`` are two keys. MariaDB's and MySQL's default collations ignore
    case and accents, so there these columns use ``utf8mb4_bin``.
    """
    return String(length).with_variant(mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb")


class Base(DeclarativeBase):
    pass


# Decisions and the findings behind them --------------------------------------


class DecisionRow(Base):
    __tablename__ = "decisions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject_type: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(exact_text(512))
    account_id: Mapped[str] = mapped_column(String(512), default="")
    plan: Mapped[str] = mapped_column(String(128), default="")
    action: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(16), default="all")
    limit_rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    score: Mapped[float] = mapped_column(Float)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    origin: Mapped[str] = mapped_column(String(256))
    rule: Mapped[str] = mapped_column(String(256), default="")
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (
        Index("ix_decisions_subject", "subject_type", "subject"),
        Index("ix_decisions_expires_at", "expires_at"),
    )


class FindingRow(Base):
    __tablename__ = "findings"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject_type: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(exact_text(512))
    account_id: Mapped[str] = mapped_column(String(512), default="")
    plan: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    impact: Mapped[float] = mapped_column(Float)
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    origin: Mapped[str] = mapped_column(String(256))
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (Index("ix_findings_subject", "subject_type", "subject"),)


# Runs ------------------------------------------------------------------------


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    inputs: Mapped[list[str]] = mapped_column(JSON)
    records: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    duplicates: Mapped[int] = mapped_column(Integer)
    findings: Mapped[int] = mapped_column(Integer)
    decisions: Mapped[int] = mapped_column(Integer)
    policy: Mapped[str] = mapped_column(String(256))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    note: Mapped[str] = mapped_column(Text, default="")


# Gateways allowed to read decisions over HTTP ----------------------------------


class GatewayRow(Base):
    __tablename__ = "gateways"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # SHA-256 of the API key; the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_pull_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# Staff verdicts, the labels analysts retrain on --------------------------------


class LabelRow(Base):
    """A staff verdict on a subject: ``abuse`` (confirmed) or ``benign`` (false positive)."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_type: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(exact_text(512))
    verdict: Mapped[str] = mapped_column(String(16))
    # The reason codes of the decision the verdict is about, e.g. ["key_sharing"].
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    decision_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    staff: Mapped[str] = mapped_column(String(128))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_labels_subject", "subject_type", "subject"),)
