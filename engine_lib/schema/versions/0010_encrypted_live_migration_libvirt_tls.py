"""Encrypted live migration (libvirt TLS).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade():
    # Off, as oVirt's "Encrypted VM migration" default: existing clusters keep
    # migrating over qemu+tcp, which hosts deployed before libvirt TLS still serve.
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('migration_encrypted', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    # Each attempt records whether it was encrypted; earlier ones were not.
    with op.batch_alter_table('migrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('encrypted', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade():
    with op.batch_alter_table('migrations', schema=None) as batch_op:
        batch_op.drop_column('encrypted')
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.drop_column('migration_encrypted')
