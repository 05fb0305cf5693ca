"""Tables of the gateway integrations: import cursors, enforcement state and its audit trail.

``GatewayCursorRow`` remembers how far each import (and each enforcer's read
of the decisions change stream) got, so a rerun reads only new rows.
``GatewayEnforcementRow`` records what an enforcer changed inside a gateway and
the value it found there before, so the change can be undone.
``GatewayCallRow`` records every admin API call, dry runs included.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from detector.store.models import Base, UTCDateTime, exact_text


class GatewayCursorRow(Base):
    """How far one named reader got: the last row id, or the last (time, id) pair."""

    __tablename__ = "gateway_cursors"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    last_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    rows_read: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class GatewayEnforcementRow(Base):
    """One change an enforcer keeps in force inside a gateway, or has undone.

    ``state`` is ``applied`` (the enforcer changed the target and will undo
    it), ``staff`` (the target was already disabled when the decision came, so
    the enforcer left it alone and will not enable it), ``rejected`` (the
    gateway refused the call for good) or ``released`` (undone or no longer
    needed). ``previous`` is the target's value before the change.
    """

    __tablename__ = "gateway_enforcements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gateway: Mapped[str] = mapped_column(String(128))
    target_type: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(exact_text(256))
    action: Mapped[str] = mapped_column(String(16))
    value: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    previous: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16))
    decision_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    message: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("gateway", "target_type", "target", "action", name="uq_gateway_enforcements_target"),
    )


class GatewayCallRow(Base):
    """One admin API call an enforcer made or, in a dry run, would have made."""

    __tablename__ = "gateway_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gateway: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(256))
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text, default="")
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    decision_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_gateway_calls_gateway_created", "gateway", "created_at"),)
