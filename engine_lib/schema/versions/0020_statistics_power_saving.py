"""Statistics (the latest figures of hosts and VMs, and their history), power saving's
record of the hosts it powered down, and HA reservation.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def _rates():
    return [sa.Column(name, sa.Float(), nullable=True)
            for name in ('net_rx_bps', 'net_tx_bps', 'disk_read_bps', 'disk_write_bps')]


def upgrade():
    with op.batch_alter_table('clusters') as batch:
        batch.add_column(sa.Column('ha_reservation', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table('hosts') as batch:
        batch.add_column(sa.Column('power_saving', sa.String(length=16), nullable=False,
                                   server_default=sa.text("''")))
        batch.add_column(sa.Column('power_saving_at', sa.DateTime(timezone=True),
                                   nullable=True))
    op.create_table(
        'host_statistics',
        sa.Column('host_id', sa.String(length=36),
                  sa.ForeignKey('hosts.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('sampled_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('cpu_percent', sa.Float(), nullable=True),
        sa.Column('memory_used_mib', sa.Integer(), nullable=False),
        sa.Column('memory_free_mib', sa.Integer(), nullable=False),
        sa.Column('load_1m', sa.Float(), nullable=True),
        sa.Column('load_5m', sa.Float(), nullable=True),
        sa.Column('load_15m', sa.Float(), nullable=True),
        *_rates(),
        sa.Column('running_vms', sa.Integer(), nullable=False),
    )
    op.create_table(
        'vm_statistics',
        sa.Column('vm_id', sa.String(length=36),
                  sa.ForeignKey('vms.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('host_id', sa.String(length=36),
                  sa.ForeignKey('hosts.id', ondelete='SET NULL'), nullable=True),
        sa.Column('sampled_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('cpu_percent', sa.Float(), nullable=True),
        sa.Column('memory_used_mib', sa.Integer(), nullable=True),
        sa.Column('balloon_current_mib', sa.Integer(), nullable=True),
        sa.Column('balloon_target_mib', sa.Integer(), nullable=True),
        *_rates(),
    )
    op.create_table(
        'stats_samples',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                  primary_key=True, autoincrement=True),
        sa.Column('kind', sa.String(length=4), nullable=False),
        sa.Column('object_id', sa.String(length=36), nullable=False),
        sa.Column('resolution', sa.String(length=4), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('samples', sa.Integer(), nullable=False),
        sa.Column('cpu_percent', sa.Float(), nullable=True),
        sa.Column('cpu_percent_max', sa.Float(), nullable=True),
        sa.Column('memory_used_mib', sa.Float(), nullable=True),
        sa.Column('memory_free_mib', sa.Float(), nullable=True),
        sa.Column('load_1m', sa.Float(), nullable=True),
        *_rates(),
        sa.UniqueConstraint('kind', 'object_id', 'resolution', 'at'),
    )
    # Rollups and retention read one resolution's rows by time.
    op.create_index('ix_stats_samples_resolution_at', 'stats_samples', ['resolution', 'at'])
    op.create_table(
        'ha_reservation_checks',
        sa.Column('cluster_id', sa.String(length=36),
                  sa.ForeignKey('clusters.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('detail', sa.JSON(), nullable=False),
    )


def downgrade():
    op.drop_table('ha_reservation_checks')
    op.drop_index('ix_stats_samples_resolution_at', table_name='stats_samples')
    op.drop_table('stats_samples')
    op.drop_table('vm_statistics')
    op.drop_table('host_statistics')
    with op.batch_alter_table('hosts') as batch:
        batch.drop_column('power_saving_at')
        batch.drop_column('power_saving')
    with op.batch_alter_table('clusters') as batch:
        batch.drop_column('ha_reservation')
