"""The active model version and the shadow candidate, recorded in the database for every worker.

Each change is a new ``model_assignments`` row, never an update, so the
table is also the history of activations. The current assignment of a role
is its newest row. A shadow row without a version and without a policy means
the shadow was stopped.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, Index, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from detector.store.models import Base, UTCDateTime

ACTIVE = "active"
SHADOW = "shadow"


class ModelAssignmentRow(Base):
    """One activation of a model version, or one start or stop of a shadow run."""

    __tablename__ = "model_assignments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    role: Mapped[str] = mapped_column(String(16))
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The shadow's policy, kept as TOML text so workers on other machines read the same rules.
    policy_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    policy_toml: Mapped[str | None] = mapped_column(Text, nullable=True)
    changed_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_model_assignments_role", "role", "id"),)


@dataclass(frozen=True, slots=True)
class Assignment:
    """The current model version (and, for a shadow, policy) of one role."""

    role: str
    version: str | None
    policy_name: str | None
    policy_toml: str | None
    changed_by: str
    created_at: datetime

    @property
    def is_set(self) -> bool:
        return self.version is not None or self.policy_toml is not None


class ModelAssignments:
    """Read and record the active and shadow assignments in the decision store's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def current(self, role: str) -> Assignment | None:
        """Return the newest assignment of ``role``, or None when none was ever recorded."""
        query = (
            select(ModelAssignmentRow)
            .where(ModelAssignmentRow.role == role)
            .order_by(ModelAssignmentRow.id.desc())
            .limit(1)
        )
        with Session(self.engine) as session:
            row = session.scalars(query).first()
            return _to_assignment(row) if row else None

    def history(self, limit: int = 20) -> list[Assignment]:
        """Return the newest ``limit`` assignments of both roles, newest first."""
        query = select(ModelAssignmentRow).order_by(ModelAssignmentRow.id.desc()).limit(limit)
        with Session(self.engine) as session:
            return [_to_assignment(row) for row in session.scalars(query)]

    def record(
        self,
        role: str,
        version: str | None,
        *,
        policy_name: str | None = None,
        policy_toml: str | None = None,
        changed_by: str | None = None,
    ) -> Assignment:
        """Append an assignment of ``role`` and return it."""
        if role not in (ACTIVE, SHADOW):
            raise ValueError(f"invalid role {role!r}; expected {ACTIVE!r} or {SHADOW!r}")
        row = ModelAssignmentRow(
            role=role,
            version=version,
            policy_name=policy_name,
            policy_toml=policy_toml,
            changed_by=changed_by or _user(),
            created_at=datetime.now(UTC),
        )
        with Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            return _to_assignment(row)


def _to_assignment(row: ModelAssignmentRow) -> Assignment:
    return Assignment(
        role=row.role,
        version=row.version,
        policy_name=row.policy_name,
        policy_toml=row.policy_toml,
        changed_by=row.changed_by,
        created_at=row.created_at,
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
