"""model registry: which model version is active and which runs in shadow

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _utc_datetime() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "model_assignments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("policy_name", sa.String(length=256), nullable=True),
        sa.Column("policy_toml", sa.Text(), nullable=True),
        sa.Column("changed_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_assignments_role", "model_assignments", ["role", "id"])


def downgrade() -> None:
    op.drop_index("ix_model_assignments_role", table_name="model_assignments")
    op.drop_table("model_assignments")
