"""Live migration (issue 7): a record per migration attempt, the cluster's migration policy.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('migration_policy', sa.String(length=32), nullable=False,
                                      server_default=sa.text("'minimal_downtime'")))
        batch_op.add_column(sa.Column('migration_bandwidth_mbps', sa.Integer(), nullable=False,
                                      server_default=sa.text('0')))
    op.create_table(
        'migrations',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('vm_id', sa.String(length=36), sa.ForeignKey('vms.id', ondelete='CASCADE'),
                  nullable=False),
        sa.Column('vm_name', sa.String(length=64), nullable=False),
        sa.Column('source', sa.String(length=64), nullable=False),
        sa.Column('destination', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('policy', sa.String(length=32), nullable=False),
        sa.Column('bandwidth_mbps', sa.Integer(), nullable=False),
        sa.Column('progress', sa.JSON(), nullable=False),
        sa.Column('downtime_ms', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('duration_s', sa.Float(), nullable=False),
    )
    op.create_index('ix_migrations_vm_id', 'migrations', ['vm_id'])


def downgrade():
    op.drop_index('ix_migrations_vm_id', table_name='migrations')
    op.drop_table('migrations')
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.drop_column('migration_bandwidth_mbps')
        batch_op.drop_column('migration_policy')
