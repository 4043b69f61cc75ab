"""VM settings for complete domain XML (issue 3): memory and vCPU hotplug, CPU mode and
model, firmware, NUMA, huge pages, launch paused, cloud-init, high availability, placement.

Devices (CD-ROM, graphics, video, channels, RNG, watchdog, TPM) need no schema change:
they are rows of vm_devices with their settings in ``spec``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# Existing rows get the defaults a new VM gets.
_COLUMNS = (
    ('max_memory_mib', sa.Integer(), '0'),
    ('max_vcpus', sa.Integer(), '0'),
    ('cpu_mode', sa.String(length=32), "''"),
    ('cpu_model', sa.String(length=64), "''"),
    ('firmware', sa.String(length=8), "'bios'"),
    ('secure_boot', sa.Boolean(), 'false'),
    ('numa_nodes', sa.Integer(), '0'),
    ('hugepages_kib', sa.Integer(), '0'),
    ('launch_paused', sa.Boolean(), 'false'),
    ('cloud_init', sa.JSON(), "'{}'"),
    ('high_availability', sa.JSON(), '\'{"enabled": false, "priority": 0}\''),
    ('placement', sa.JSON(), '\'{"hosts": [], "affinity_groups": []}\''),
)


def upgrade() -> None:
    with op.batch_alter_table('vms', schema=None) as batch_op:
        for name, type_, default in _COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=False,
                                          server_default=sa.text(default)))


def downgrade() -> None:
    with op.batch_alter_table('vms', schema=None) as batch_op:
        for name, _, _ in reversed(_COLUMNS):
            batch_op.drop_column(name)
