"""create decisions findings and runs

Revision ID: 0001
Revises: 
Create Date: 2026-12-04 19:49:23.620594
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def _utc_datetime() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:

    op.create_table('decisions',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('subject_type', sa.String(length=16), nullable=False),
    sa.Column('subject', sa.String(length=512), nullable=False),
    sa.Column('account_id', sa.String(length=512), nullable=False),
    sa.Column('plan', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('limit_rpm', sa.Integer(), nullable=True),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('detected_at', _utc_datetime(), nullable=False),
    sa.Column('created_at', _utc_datetime(), nullable=False),
    sa.Column('expires_at', _utc_datetime(), nullable=False),
    sa.Column('origin', sa.String(length=256), nullable=False),
    sa.Column('rule', sa.String(length=256), nullable=False),
    sa.Column('simulated', sa.Boolean(), nullable=False),
    sa.Column('extra', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index('ix_decisions_expires_at', ['expires_at'], unique=False)
        batch_op.create_index('ix_decisions_subject', ['subject_type', 'subject'], unique=False)

    op.create_table('findings',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('subject_type', sa.String(length=16), nullable=False),
    sa.Column('subject', sa.String(length=512), nullable=False),
    sa.Column('account_id', sa.String(length=512), nullable=False),
    sa.Column('plan', sa.String(length=128), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('impact', sa.Float(), nullable=False),
    sa.Column('detected_at', _utc_datetime(), nullable=False),
    sa.Column('window_start', _utc_datetime(), nullable=False),
    sa.Column('window_end', _utc_datetime(), nullable=False),
    sa.Column('origin', sa.String(length=256), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('findings', schema=None) as batch_op:
        batch_op.create_index('ix_findings_subject', ['subject_type', 'subject'], unique=False)

    op.create_table('runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('started_at', _utc_datetime(), nullable=False),
    sa.Column('finished_at', _utc_datetime(), nullable=False),
    sa.Column('inputs', sa.JSON(), nullable=False),
    sa.Column('records', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.Column('findings', sa.Integer(), nullable=False),
    sa.Column('decisions', sa.Integer(), nullable=False),
    sa.Column('policy', sa.String(length=256), nullable=False),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )

def downgrade() -> None:

    op.drop_table('runs')
    with op.batch_alter_table('findings', schema=None) as batch_op:
        batch_op.drop_index('ix_findings_subject')

    op.drop_table('findings')
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index('ix_decisions_subject')
        batch_op.drop_index('ix_decisions_expires_at')

    op.drop_table('decisions')

