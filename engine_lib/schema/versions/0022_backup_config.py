"""A backup's VM settings at backup time, so a restore makes a new VM like the one saved.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade():
    # Nullable: rows written before this revision have no settings to restore from.
    op.add_column('backups', sa.Column('vm_config', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('backups') as batch:
        batch.drop_column('vm_config')
