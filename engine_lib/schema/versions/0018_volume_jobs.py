"""The agent job writing a locked volume (an upload, an import), so that after a crash
the engine can tell a volume still being written from one whose job was lost.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('volumes') as batch:
        batch.add_column(sa.Column('job_id', sa.String(length=36), nullable=False,
                                   server_default=sa.text("''")))
        batch.add_column(sa.Column('job_host', sa.String(length=64), nullable=False,
                                   server_default=sa.text("''")))


def downgrade():
    with op.batch_alter_table('volumes') as batch:
        batch.drop_column('job_host')
        batch.drop_column('job_id')
