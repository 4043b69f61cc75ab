"""Snapshots, checkpoints and backups: the engine's record of each VM's restore points.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def _job():
    return [sa.Column('job_id', sa.String(length=36), nullable=False, server_default=''),
            sa.Column('job_host', sa.String(length=64), nullable=False, server_default='')]


def upgrade():
    op.create_table(
        'snapshots',
        sa.Column('id', sa.String(length=36), primary_key=True),
        sa.Column('vm_id', sa.String(length=36), sa.ForeignKey('vms.id', ondelete='CASCADE'),
                  nullable=False, index=True),
        sa.Column('description', sa.Text(), nullable=False, server_default=''),
        sa.Column('status', sa.String(length=16), nullable=False, server_default='locked'),
        sa.Column('operation', sa.String(length=16), nullable=False, server_default=''),
        sa.Column('use_memory', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('memory_volume', sa.JSON(), nullable=True),
        sa.Column('quiesced', sa.Boolean(), nullable=True),
        sa.Column('vm_running', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('vm_config', sa.JSON(), nullable=False),
        sa.Column('disks', sa.JSON(), nullable=False),
        *_job(),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
    )
    op.create_table(
        'checkpoints',
        sa.Column('id', sa.String(length=36), primary_key=True),
        sa.Column('vm_id', sa.String(length=36), sa.ForeignKey('vms.id', ondelete='CASCADE'),
                  nullable=False, index=True),
        sa.Column('parent_id', sa.String(length=36), nullable=False, server_default=''),
        sa.Column('disks', sa.JSON(), nullable=False),
        sa.Column('xml', sa.Text(), nullable=False, server_default=''),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        'backups',
        sa.Column('id', sa.String(length=36), primary_key=True),
        sa.Column('vm_id', sa.String(length=36), nullable=False, index=True),
        sa.Column('vm_name', sa.String(length=64), nullable=False, index=True),
        sa.Column('description', sa.Text(), nullable=False, server_default=''),
        sa.Column('mode', sa.String(length=16), nullable=False, server_default='full'),
        sa.Column('fallback_reason', sa.Text(), nullable=False, server_default=''),
        sa.Column('checkpoint_id', sa.String(length=36), nullable=False, server_default=''),
        sa.Column('from_checkpoint_id', sa.String(length=36), nullable=False,
                  server_default=''),
        sa.Column('status', sa.String(length=16), nullable=False, server_default='running'),
        sa.Column('storage_domain', sa.String(length=64), nullable=False),
        sa.Column('disks', sa.JSON(), nullable=False),
        sa.Column('bytes_written', sa.BigInteger(), nullable=False, server_default='0'),
        sa.Column('error', sa.Text(), nullable=False, server_default=''),
        *_job(),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('version', sa.Integer(), nullable=False),
    )


def downgrade():
    op.drop_table('backups')
    op.drop_table('checkpoints')
    op.drop_table('snapshots')
