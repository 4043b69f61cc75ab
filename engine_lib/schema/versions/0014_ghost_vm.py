"""A start the host has not answered for.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade():
    # A start or restore call that ended without the agent's answer (timeout, reset):
    # the VM waits on that host, holding its claim, until the host reports it.
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.add_column(sa.Column('launch_unconfirmed', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade():
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.drop_column('launch_unconfirmed')
