"""Volume chains and templates: every disk's volume as a row with its parent,
template versions, and the template a VM was made from.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def _empty():
    return sa.text("''")


def upgrade():
    op.create_table(
        'templates',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('version_number', sa.Integer(), nullable=False, server_default=sa.text('1')),
        sa.Column('version_name', sa.String(length=64), nullable=False, server_default=_empty()),
        sa.Column('description', sa.Text(), nullable=False, server_default=_empty()),
        sa.Column('cluster_id', sa.String(length=36), sa.ForeignKey('clusters.id'),
                  nullable=False),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('sealed', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('status', sa.String(length=16), nullable=False, server_default=sa.text("'ok'")),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name', 'version_number'),
    )
    op.create_index('ix_templates_name', 'templates', ['name'])
    op.create_index('ix_templates_cluster_id', 'templates', ['cluster_id'])
    volumes = op.create_table(
        'volumes',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('image_id', sa.String(length=36), nullable=False),
        sa.Column('storage_domain', sa.String(length=64), nullable=False),
        sa.Column('parent_id', sa.String(length=36),
                  sa.ForeignKey('volumes.id', ondelete='RESTRICT'), nullable=True),
        sa.Column('format', sa.String(length=8), nullable=False, server_default=sa.text("'qcow2'")),
        sa.Column('size_mib', sa.Integer(), nullable=False, server_default=sa.text('0')),
        sa.Column('content_type', sa.String(length=8), nullable=False,
                  server_default=sa.text("'data'")),
        sa.Column('name', sa.String(length=64), nullable=False, server_default=_empty()),
        sa.Column('description', sa.Text(), nullable=False, server_default=_empty()),
        sa.Column('template_id', sa.String(length=36),
                  sa.ForeignKey('templates.id', ondelete='RESTRICT'), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False, server_default=sa.text("'ok'")),
        sa.Column('readonly', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('sha256', sa.String(length=64), nullable=False, server_default=_empty()),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    for column in ('image_id', 'storage_domain', 'parent_id', 'name', 'template_id'):
        op.create_index(f'ix_volumes_{column}', 'volumes', [column])
    with op.batch_alter_table('vms') as batch:
        batch.add_column(sa.Column('template_id', sa.String(length=36), nullable=True))
        batch.create_foreign_key('fk_vms_template_id', 'templates', ['template_id'], ['id'])
        batch.create_index('ix_vms_template_id', ['template_id'])
    _register_disk_volumes(volumes)


def _register_disk_volumes(volumes):
    """Every existing disk on a storage domain gets its volume row (no parent: disks
    made before templates are single volumes)."""
    devices = sa.table('vm_devices', sa.column('type', sa.String), sa.column('spec', sa.JSON))
    rows, now = [], datetime.now(UTC)
    for (spec,) in op.get_bind().execute(sa.select(devices.c.spec)
                                         .where(devices.c.type == 'disk')):
        if not spec or 'lun' in spec or not spec.get('volume_id'):
            continue
        rows.append({'id': spec['volume_id'], 'image_id': spec.get('image_id') or str(uuid.uuid4()),
                     'storage_domain': spec.get('storage_domain', ''), 'parent_id': None,
                     'format': spec.get('format', 'qcow2'), 'size_mib': spec.get('size_mib', 0),
                     'content_type': 'data', 'name': '', 'description': '', 'template_id': None,
                     'status': 'ok', 'readonly': False, 'sha256': '',
                     'created_at': now, 'version': 1})
    if rows:
        op.bulk_insert(volumes, rows)


def downgrade():
    with op.batch_alter_table('vms') as batch:
        batch.drop_index('ix_vms_template_id')
        batch.drop_constraint('fk_vms_template_id', type_='foreignkey')
        batch.drop_column('template_id')
    op.drop_table('volumes')
    op.drop_table('templates')
