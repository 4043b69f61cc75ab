"""Collection (issue 9): logical networks, storage domains, VM tags, host storage facts.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tags', sa.JSON(), nullable=False,
                                      server_default=sa.text("'[]'")))
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('storage_domains', sa.JSON(), nullable=True))
    op.create_table(
        'networks',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('cluster_id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('description', sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column('bridge', sa.String(length=15), nullable=False),
        sa.Column('vlan', sa.Integer(), nullable=False, server_default=sa.text('0')),
        sa.Column('mtu', sa.Integer(), nullable=False, server_default=sa.text('0')),
        sa.Column('required', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['cluster_id'], ['clusters.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('cluster_id', 'name'),
    )
    with op.batch_alter_table('networks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_networks_cluster_id'), ['cluster_id'], unique=False)
    op.create_table(
        'storage_domains',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('description', sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column('type', sa.String(length=8), nullable=False, server_default=sa.text("'file'")),
        sa.Column('path', sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column('export', sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_table(
        'storage_domain_clusters',
        sa.Column('storage_domain_id', sa.String(length=36), nullable=False),
        sa.Column('cluster_id', sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(['storage_domain_id'], ['storage_domains.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['cluster_id'], ['clusters.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('storage_domain_id', 'cluster_id'),
    )


def downgrade():
    op.drop_table('storage_domain_clusters')
    op.drop_table('storage_domains')
    with op.batch_alter_table('networks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_networks_cluster_id'))
    op.drop_table('networks')
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_column('storage_domains')
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.drop_column('tags')
