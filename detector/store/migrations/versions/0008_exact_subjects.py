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


def upgrade() -> None:
    _set_collation(exact=True)


def downgrade() -> None:
    # Rows differing only in case then collide on subject_activity's unique hour and stop the downgrade.
    _set_collation(exact=False)


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
