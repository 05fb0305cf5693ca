"""finding ids name the evidence kind

Two findings of one subject and reason detected at the same millisecond, such
as abnormal_cost's rolling hour and 10-minute window, used to share an id, so
the store kept only the first. Ids of findings whose evidence has a ``kind``
now include it. This migration gives stored findings their new ids.

Revision ID: 0007
Revises: 0006
"""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The namespace of finding ids in detector/store/repository.py, fixed here as it was when this ran.
_NAMESPACE = uuid.UUID("0b7d7f1e-2c55-4c1a-8b8e-9d0f3c9a51c7")
_BATCH = 1000


def upgrade() -> None:
    _renumber(with_kind=True)


def downgrade() -> None:
    _renumber(with_kind=False)


def _renumber(*, with_kind: bool) -> None:
    """Give every stored finding with an evidence kind the id of its content, with or without the kind.

    A finding whose new id is already taken is deleted: it repeats a stored one.
    """
    connection = op.get_bind()
    findings = sa.table(
        "findings", sa.column("id", sa.String), sa.column("subject_type", sa.String), sa.column("subject", sa.String),
        sa.column("reason", sa.String), sa.column("detected_at", sa.DateTime), sa.column("origin", sa.String),
        sa.column("evidence", sa.JSON),
    )
    rows = connection.execute(sa.select(findings)).all()
    taken = {row.id for row in rows}
    renamed: list[dict[str, str]] = []
    repeated: list[str] = []
    for row in rows:
        kind = (row.evidence or {}).get("kind")
        if kind is None:
            continue
        new = _finding_id(row, kind if with_kind else None)
        if new == row.id:
            continue
        if new in taken:
            repeated.append(row.id)
            continue
        taken.add(new)
        renamed.append({"old": row.id, "new": new})

    update = sa.update(findings).where(findings.c.id == sa.bindparam("old")).values(id=sa.bindparam("new"))
    for start in range(0, len(renamed), _BATCH):
        connection.execute(update, renamed[start : start + _BATCH])
    for start in range(0, len(repeated), _BATCH):
        connection.execute(sa.delete(findings).where(findings.c.id.in_(repeated[start : start + _BATCH])))


def _finding_id(row, kind: str | None) -> str:
    detected_at = row.detected_at if row.detected_at.tzinfo else row.detected_at.replace(tzinfo=UTC)
    parts = [row.subject_type, row.subject, row.reason]
    parts += [str(kind)] if kind is not None else []
    parts += [f"{datetime.timestamp(detected_at):.3f}", row.origin]
    return str(uuid.uuid5(_NAMESPACE, "|".join(parts)))
