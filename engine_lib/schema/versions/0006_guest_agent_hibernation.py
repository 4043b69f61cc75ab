"""Agent (issue 4): reserved for guest-agent data and hibernation state.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('vms', schema=None) as batch_op:
        # The latest qemu-guest-agent report ({} when none answered) and when it changed.
        batch_op.add_column(sa.Column('guest_info', sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column('guest_info_at', sa.DateTime(timezone=True),
                                      nullable=True))
        # Where a Suspended VM's memory is saved ({domain, image, volume}).
        batch_op.add_column(sa.Column('memory_volume', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.drop_column('memory_volume')
        batch_op.drop_column('guest_info_at')
        batch_op.drop_column('guest_info')
