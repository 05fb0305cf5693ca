"""subjects compared byte for byte on MariaDB and MySQL

Key ids, account ids and addresses are case-sensitive, but MariaDB's and
MySQL's default collations ignore case and accents. There, ``key-a`` and
``KEY-A`` shared their activity rows (a batch holding both failed on the
unique hour), and a lookup of one returned the other's decisions and
findings. This migration gives the subject columns, and the gateway
enforcement targets, the ``utf8mb4_bin`` collation. It changes nothing on
SQLite and PostgreSQL, which compare text exactly.

Revision ID: 0008
Revises: 0007
"""

import re

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# (table, column, length) of the identifiers compared exactly.
COLUMNS = (
    ("decisions", "subject", 512),
    ("findings", "subject", 512),
    ("labels", "subject", 512),
    ("cases", "subject", 512),
    ("audit_records", "subject", 512),
    ("allowlist_entries", "subject", 512),
    ("subject_activity", "subject", 512),
    ("gateway_enforcements", "target", 256),
)


# (table, columns) of the unique constraints that hold an exact column, whose rows may collide once it ignores case.
UNIQUE = (
    ("subject_activity", ("subject_type", "subject", "hour")),
    ("gateway_enforcements", ("gateway", "target_type", "target", "action")),
)


def upgrade() -> None:
    _set_collation(exact=True)


def downgrade() -> None:
    _check_no_collisions()
    _set_collation(exact=False)


def _check_no_collisions() -> None:
    """Raise before any change when rows differing only in case would collide on a unique constraint.

    MariaDB and MySQL commit each ALTER TABLE at once, so a collision found by
    the ALTER itself would leave some columns changed under revision 0008.
    """
    bind = op.get_bind()
    if bind.dialect.name not in ("mysql", "mariadb"):
        return
    for table, columns in UNIQUE:
        collation = bind.execute(sa.text(
            "SELECT table_collation FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = :table"
        ), {"table": table}).scalar_one()
        if not re.fullmatch(r"[A-Za-z0-9_]+", collation):
            raise RuntimeError(f"unexpected collation {collation!r} of table {table}")
        exact = {name for known_table, name, _ in COLUMNS if known_table == table}
        grouped = ", ".join(f"{name} COLLATE {collation}" if name in exact else name for name in columns)
        collisions = bind.execute(sa.text(
            f"SELECT {grouped}, COUNT(*) FROM {table} GROUP BY {grouped} HAVING COUNT(*) > 1 LIMIT 5"
        )).all()
        if collisions:
            shown = "; ".join(repr(tuple(row)) for row in collisions)
            raise RuntimeError(
                f"cannot downgrade: rows of {table} differing only in case would share {', '.join(columns)}, "
                f"such as {shown}. Delete or merge those rows, then downgrade again. Nothing was changed"
            )


def _set_collation(*, exact: bool) -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table, column, length in COLUMNS:
        exact_type = mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin")
        default_type = sa.String(length)
        op.alter_column(
            table, column,
            existing_type=default_type if exact else exact_type,
            type_=exact_type if exact else default_type,
            existing_nullable=False,
        )
