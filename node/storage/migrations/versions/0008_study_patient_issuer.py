"""study.patient_issuer: the issuer of the Patient ID a study is filed under

Studies indexed before this revision keep NULL (issuer unknown): the store service then
compares their Patient ID alone.

Revision ID: 0008
Revises: 0007
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        'study', sa.Column('patient_issuer', sqlmodel.sql.sqltypes.AutoString(), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table('study') as batch:
        batch.drop_column('patient_issuer')
