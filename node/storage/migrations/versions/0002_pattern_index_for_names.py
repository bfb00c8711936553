"""PostgreSQL: a text_pattern_ops index so LIKE 'PREFIX%' name searches use an index

Under a non-C collation PostgreSQL's default b-tree cannot serve LIKE prefixes; SQLite's
LIKE is served by the existing index on the upper-cased name.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX IF NOT EXISTS ix_study_patient_name_search_pattern "
            "ON study (patient_name_search text_pattern_ops)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_study_patient_name_search_pattern")
