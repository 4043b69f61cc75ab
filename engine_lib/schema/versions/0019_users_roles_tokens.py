"""The engine API's users, groups, permissions and tokens, its jobs, and who did what
in the audit log.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'users',
        sa.Column('id', sa.String(length=36), primary_key=True),
        sa.Column('name', sa.String(length=64), nullable=False, unique=True),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('email', sa.String(length=254), nullable=False),
        sa.Column('password_hash', sa.Text(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
    )
    op.create_table(
        'groups',
        sa.Column('id', sa.String(length=36), primary_key=True),
        sa.Column('name', sa.String(length=64), nullable=False, unique=True),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
    )
    op.create_table(
        'group_members',
        sa.Column('group_id', sa.String(length=36),
                  sa.ForeignKey('groups.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('user_id', sa.String(length=36),
                  sa.ForeignKey('users.id', ondelete='CASCADE'), primary_key=True),
    )
    op.create_index('ix_group_members_user_id', 'group_members', ['user_id'])
    op.create_table(
        'permissions',
        sa.Column('id', sa.String(length=36), primary_key=True),
        sa.Column('principal_type', sa.String(length=8), nullable=False),
        sa.Column('principal_id', sa.String(length=36), nullable=False),
        sa.Column('role', sa.String(length=32), nullable=False),
        sa.Column('object_type', sa.String(length=16), nullable=False),
        sa.Column('object_id', sa.String(length=36), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('principal_type', 'principal_id', 'role', 'object_type',
                            'object_id'),
    )
    op.create_index('ix_permissions_principal_id', 'permissions', ['principal_id'])
    op.create_index('ix_permissions_object_id', 'permissions', ['object_id'])
    op.create_table(
        'api_tokens',
        sa.Column('id', sa.String(length=36), primary_key=True),
        sa.Column('user_id', sa.String(length=36),
                  sa.ForeignKey('users.id', ondelete='CASCADE'), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('secret_sha256', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=32), nullable=False),
        sa.Column('expires', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_used', sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint('user_id', 'name'),
    )
    op.create_index('ix_api_tokens_user_id', 'api_tokens', ['user_id'])
    op.create_table(
        'api_jobs',
        sa.Column('id', sa.String(length=36), primary_key=True),
        sa.Column('operation', sa.String(length=64), nullable=False),
        sa.Column('user_name', sa.String(length=64), nullable=False),
        sa.Column('token_id', sa.String(length=36), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('progress', sa.Integer(), nullable=False),
        sa.Column('phase', sa.String(length=64), nullable=False),
        sa.Column('cancel_requested', sa.Boolean(), nullable=False),
        sa.Column('result', sa.JSON(), nullable=True),
        sa.Column('error', sa.JSON(), nullable=True),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ix_api_jobs_user_name', 'api_jobs', ['user_name'])
    op.create_index('ix_api_jobs_status', 'api_jobs', ['status'])
    with op.batch_alter_table('audit_log') as batch:
        # Entries from before the API: a module or command on the engine host.
        batch.add_column(sa.Column('user_name', sa.String(length=64), nullable=False,
                                   server_default=sa.text("''")))
        batch.add_column(sa.Column('token_id', sa.String(length=36), nullable=False,
                                   server_default=sa.text("''")))
        batch.create_index('ix_audit_log_user_name', ['user_name'])


def downgrade():
    with op.batch_alter_table('audit_log') as batch:
        batch.drop_index('ix_audit_log_user_name')
        batch.drop_column('token_id')
        batch.drop_column('user_name')
    op.drop_table('api_jobs')
    op.drop_table('api_tokens')
    op.drop_table('permissions')
    op.drop_table('group_members')
    op.drop_table('groups')
    op.drop_table('users')
