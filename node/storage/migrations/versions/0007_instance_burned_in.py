"""instance.burned_in_annotation: the header's burned-in declaration, recorded at store time

Existing rows get NULL ("not recorded yet"), not a value read from their headers: a migration
runs before the node opens its key ring (`Archive.open`), so it cannot decrypt them, and
reading every header of a running hospital's archive would hold the upgrade for hours. The
training view records them the first time it sees their study (node/services/burned_in.py) and
never serves an instance whose declaration is unrecorded; the partial index finds those
without a scan and empties as they are recorded.

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UNRECORDED = "burned_in_annotation IS NULL AND rows IS NOT NULL"


def upgrade() -> None:
    op.add_column("instance", sa.Column("burned_in_annotation", sa.Boolean(), nullable=True))
    op.create_index(
        "ix_instance_burned_in_unrecorded",
        "instance",
        ["study_uid"],
        unique=False,
        sqlite_where=sa.text(UNRECORDED),
        postgresql_where=sa.text(UNRECORDED),
    )


def downgrade() -> None:
    op.drop_index("ix_instance_burned_in_unrecorded", table_name="instance")
    with op.batch_alter_table("instance") as batch:
        batch.drop_column("burned_in_annotation")
