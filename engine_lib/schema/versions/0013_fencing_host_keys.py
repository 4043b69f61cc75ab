"""Hosts' SSH host keys; fence agents by name; finite fencing policies.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-10
"""

import math
import os

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

# The fencing policy's durations and their bounds as this revision knows them.
_MAX_SECONDS = {"soft_fence_grace_s": 3600.0, "ssh_timeout_s": 300.0, "power_timeout_s": 600.0}

_hosts = sa.table('hosts', sa.column('id', sa.String), sa.column('power_management', sa.JSON))
_clusters = sa.table('clusters', sa.column('id', sa.String), sa.column('fencing_policy', sa.JSON))


def upgrade():
    # The host's SSH host keys (known_hosts lines, "" = none recorded yet: the next answer of
    # its agent over mutual TLS records them), checked by every SSH login to the host.
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ssh_host_keys', sa.Text(), nullable=False,
                                      server_default=sa.text("''")))
    bind = op.get_bind()
    # A power management names its fence agent; the engine finds it (a path becomes its
    # name, which runs only if /usr/sbin or the administrator's list has it).
    for row in bind.execute(sa.select(_hosts.c.id, _hosts.c.power_management)).all():
        pm = dict(row.power_management or {})
        if isinstance(pm.get("agent"), str) and "/" in pm["agent"]:
            pm["agent"] = os.path.basename(pm["agent"])
            bind.execute(_hosts.update().where(_hosts.c.id == row.id).values(power_management=pm))
    # Durations stored before they were checked (infinite, NaN, huge) fall back to defaults.
    for row in bind.execute(sa.select(_clusters.c.id, _clusters.c.fencing_policy)).all():
        policy = dict(row.fencing_policy or {})
        kept = {key: value for key, value in policy.items() if key not in _MAX_SECONDS
                or (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and 0 < value <= _MAX_SECONDS[key])}
        if kept != policy:
            bind.execute(_clusters.update().where(_clusters.c.id == row.id)
                         .values(fencing_policy=kept))


def downgrade():
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_column('ssh_host_keys')
