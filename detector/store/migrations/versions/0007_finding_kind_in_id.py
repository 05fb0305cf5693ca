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

    Rows are read in pages by id, so a large table is never held in memory.
    A renamed row may come up again in a later page, and then keeps its id.
    A finding whose new id is already taken repeats a stored one and is deleted.
    """
    connection = op.get_bind()
    findings = _findings_table()
    last = ""
    while True:
        page = connection.execute(
            sa.select(findings).where(findings.c.id > last).order_by(findings.c.id).limit(_BATCH)
        ).all()
        if not page:
            return
        last = page[-1].id
        renamed = _new_ids(page, with_kind)
        taken = set(connection.scalars(sa.select(findings.c.id).where(findings.c.id.in_(list(renamed.values())))))
        for old, new in renamed.items():
            if new in taken:
                connection.execute(sa.delete(findings).where(findings.c.id == old))
                continue
            taken.add(new)
            connection.execute(sa.update(findings).where(findings.c.id == old).values(id=new))


def _findings_table() -> sa.TableClause:
    return sa.table(
        "findings", sa.column("id", sa.String), sa.column("subject_type", sa.String), sa.column("subject", sa.String),
        sa.column("reason", sa.String), sa.column("detected_at", sa.DateTime), sa.column("origin", sa.String),
        sa.column("evidence", sa.JSON),
    )


def _new_ids(rows, with_kind: bool) -> dict[str, str]:
    """Return the old and new id of each row with an evidence kind whose id changes."""
    renamed = {}
    for row in rows:
        kind = (row.evidence or {}).get("kind")
        if kind is None:
            continue
        new = _finding_id(row, kind if with_kind else None)
        if new != row.id:
            renamed[row.id] = new
    return renamed


def _finding_id(row, kind: str | None) -> str:
    detected_at = row.detected_at if row.detected_at.tzinfo else row.detected_at.replace(tzinfo=UTC)
    parts = [row.subject_type, row.subject, row.reason]
    parts += [str(kind)] if kind is not None else []
    parts += [f"{datetime.timestamp(detected_at):.3f}", row.origin]
    return str(uuid.uuid5(_NAMESPACE, "|".join(parts)))
