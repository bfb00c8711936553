"""user tokens_valid_after (tokens issued before an account's last change are refused)

Revision ID: 0009
Revises: 0008
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing accounts keep every token they hold (0: before any token was issued).
    op.add_column(
        'node_user',
        sa.Column('tokens_valid_after', sa.Integer(), nullable=False, server_default='0'),
    )


def downgrade() -> None:
    op.drop_column('node_user', 'tokens_valid_after')
