"""High availability (issue 8): fencing settings and the persistent HA restart intent.

Hosts get their power management (a fence-agents style agent and its options)
and soft-fence command, plus where the engine stands in fencing them; clusters
get a fencing policy; VMs get the HA restart intent with the proof that allows
it, so an engine that dies halfway through a restart finishes it on return.
Every column has a server default, so existing rows upgrade unchanged.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def _cluster_columns():
    return (
        sa.Column('fencing_policy', sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
    )


def _host_columns():
    return (
        sa.Column('power_management', sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column('soft_fence_command', sa.Text(), nullable=False,
                  server_default=sa.text("'systemctl restart kestrel-agent'")),
        sa.Column('fence_state', sa.String(length=16), nullable=False,
                  server_default=sa.text("''")),
        sa.Column('fence_changed_at', sa.DateTime(timezone=True), nullable=True),
    )


def _vm_columns():
    return (
        sa.Column('ha_restart_pending', sa.Boolean(), nullable=False,
                  server_default=sa.false()),
        sa.Column('ha_proof', sa.Text(), nullable=False, server_default=sa.text("''")),
    )


_TABLES = (('clusters', _cluster_columns), ('hosts', _host_columns), ('vms', _vm_columns))


def upgrade() -> None:
    for table, columns in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns():
                batch_op.add_column(column)


def downgrade() -> None:
    for table, columns in reversed(_TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in reversed(columns()):
                batch_op.drop_column(column.name)
