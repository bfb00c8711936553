"""study transfers (provenance of copies received from other hospitals)

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('study_transfer',
    sa.Column('transfer_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('study_uid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('source_account', sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
    sa.Column('source_hospital', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('source_endpoint', sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
    sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('consent_ref', sqlmodel.sql.sqltypes.AutoString(length=66), nullable=True),
    sa.Column('break_glass_tx', sqlmodel.sql.sqltypes.AutoString(length=66), nullable=True),
    sa.Column('access_tx', sqlmodel.sql.sqltypes.AutoString(length=66), nullable=True),
    sa.Column('instances_expected', sa.Integer(), nullable=True),
    sa.Column('instances_received', sa.Integer(), nullable=False),
    sa.Column('complete', sa.Boolean(), nullable=False),
    sa.Column('received_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('completed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('transfer_id')
    )
    op.create_index(op.f('ix_study_transfer_study_uid'), 'study_transfer', ['study_uid'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_study_transfer_study_uid'), table_name='study_transfer')
    op.drop_table('study_transfer')
