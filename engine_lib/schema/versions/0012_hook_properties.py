"""The custom properties a cluster's VMs may set.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    # Empty: an existing VM that sets custom properties does not start until the
    # cluster's administrator allows them (they reach hooks that run as root).
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('custom_properties', sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))


def downgrade():
    with op.batch_alter_table('clusters', schema=None) as batch_op:
        batch_op.drop_column('custom_properties')
