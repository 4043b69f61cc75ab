"""Device matching (issue 5): the devices hash last matched per VM, guest device names.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('vms', schema=None) as batch_op:
        # '' = never matched: the first VM poll fetches the live XML.
        batch_op.add_column(sa.Column('devices_hash', sa.String(length=64), nullable=False,
                                      server_default=sa.text("''")))
    with op.batch_alter_table('vm_devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('guest_name', sa.String(length=64), nullable=False,
                                      server_default=sa.text("''")))


def downgrade():
    with op.batch_alter_table('vm_devices', schema=None) as batch_op:
        batch_op.drop_column('guest_name')
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.drop_column('devices_hash')
