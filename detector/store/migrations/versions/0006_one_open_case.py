"""at most one open case per subject

Revision ID: 0006
Revises: 0005
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("open_subject", sa.String(length=64), nullable=True))
    _mark_oldest_open_cases()
    op.create_index("ux_cases_open_subject", "cases", ["open_subject"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_cases_open_subject", table_name="cases")
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("open_subject")


def _mark_oldest_open_cases() -> None:
    """Give each subject's oldest open case its slot; open duplicates from before stay open without one."""
    connection = op.get_bind()
    cases = sa.table("cases", sa.column("id"), sa.column("subject_type"), sa.column("subject"),
                     sa.column("status"), sa.column("open_subject"))
    rows = connection.execute(
        sa.select(cases.c.id, cases.c.subject_type, cases.c.subject).where(cases.c.status == "open").order_by(cases.c.id)
    ).all()
    taken: set[str] = set()
    for case_id, subject_type, subject in rows:
        slot = hashlib.sha256(f"{subject_type}\x00{subject}".encode()).hexdigest()
        if slot in taken:
            continue
        taken.add(slot)
        connection.execute(sa.update(cases).where(cases.c.id == case_id).values(open_subject=slot))
