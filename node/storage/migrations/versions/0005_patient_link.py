"""patient links (network identities signed by the patient)

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('patient_link',
    sa.Column('link_key', sa.Integer(), nullable=False),
    sa.Column('mrn', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('issuer', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
    sa.Column('signature', sqlmodel.sql.sqltypes.AutoString(length=132), nullable=False),
    sa.Column('nonce', sqlmodel.sql.sqltypes.AutoString(length=66), nullable=False),
    sa.Column('issued_at', sa.Integer(), nullable=False),
    sa.Column('linked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('unlinked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('link_key'),
    sa.UniqueConstraint('signature')
    )
    op.create_index(op.f('ix_patient_link_address'), 'patient_link', ['address'], unique=False)
    op.create_index(op.f('ix_patient_link_mrn'), 'patient_link', ['mrn'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_patient_link_mrn'), table_name='patient_link')
    op.drop_index(op.f('ix_patient_link_address'), table_name='patient_link')
    op.drop_table('patient_link')
