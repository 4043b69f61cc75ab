"""Scheduling (issue 6): cluster policy and its parameters, host facts the filters read,
affinity groups.

Host facts are nullable where "not reported" must stay distinguishable from
"reported empty" (a host without networks is not a host that never said).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

def _cluster_columns():
    return (
        sa.Column('scheduling_policy', sa.String(length=32), nullable=False,
                  server_default=sa.text("'none'")),
        sa.Column('scheduling_properties', sa.JSON(), nullable=False,
                  server_default=sa.text("'{}'")),
    )


def _host_columns():
    return (
        sa.Column('cpu_model', sa.String(length=64), nullable=True),
        sa.Column('machines', sa.JSON(), nullable=True),
        sa.Column('networks', sa.JSON(), nullable=True),
        sa.Column('hooks', sa.JSON(), nullable=True),
        sa.Column('hugepages', sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column('used_memory_mib', sa.Integer(), nullable=False, server_default=sa.text('0')),
        sa.Column('used_cpu_percent', sa.Float(), nullable=False, server_default=sa.text('0')),
    )


def upgrade() -> None:
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        for column in _cluster_columns():
            batch_op.add_column(column)
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        for column in _host_columns():
            batch_op.add_column(column)
    op.create_table('affinity_groups',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('cluster_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('vm_rule', sa.String(length=16), nullable=False),
    sa.Column('vm_enforcing', sa.Boolean(), nullable=False),
    sa.Column('host_rule', sa.String(length=16), nullable=False),
    sa.Column('host_enforcing', sa.Boolean(), nullable=False),
    sa.Column('hosts', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['cluster_id'], ['clusters.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cluster_id', 'name')
    )
    with op.batch_alter_table('affinity_groups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_affinity_groups_cluster_id'), ['cluster_id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('affinity_groups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_affinity_groups_cluster_id'))
    op.drop_table('affinity_groups')
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        for column in reversed(_host_columns()):
            batch_op.drop_column(column.name)
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        for column in reversed(_cluster_columns()):
            batch_op.drop_column(column.name)
