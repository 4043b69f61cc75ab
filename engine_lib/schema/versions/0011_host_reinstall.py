"""Host reinstall.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    # Which agent build the engine last installed on each host (host_deploy); "" for
    # hosts deployed before (or only by the host role): the next reinstall records it.
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('agent_version', sa.String(length=64), nullable=False,
                                      server_default=sa.text("''")))
        batch_op.add_column(sa.Column('agent_wheel_sha256', sa.String(length=64),
                                      nullable=False, server_default=sa.text("''")))
        batch_op.add_column(sa.Column('agent_installed_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('install_error', sa.Text(), nullable=False,
                                      server_default=sa.text("''")))


def downgrade():
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_column('install_error')
        batch_op.drop_column('agent_installed_at')
        batch_op.drop_column('agent_wheel_sha256')
        batch_op.drop_column('agent_version')
