"""Unique MACs; disks remember that their volume exists.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08

A database written before MACs were unique may hold NICs that share one (two
playbooks that created VMs at once drew the same address, or two clusters drew
from the same default range). The NIC of the oldest VM keeps the MAC; every
other one gets the lowest free address of its cluster's pool, and the audit log
says which VM's NIC changed from what to what. Refusing the upgrade instead
would leave the operator no tool to fix it: every engine entry point upgrades
the schema first. A VM that runs keeps its old MAC until its next start.
"""

import datetime

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

_devices = sa.table('vm_devices', sa.column('id', sa.String), sa.column('vm_id', sa.String),
                    sa.column('type', sa.String), sa.column('managed', sa.Boolean),
                    sa.column('position', sa.Integer), sa.column('spec', sa.JSON),
                    sa.column('mac', sa.String), sa.column('alias', sa.String),
                    sa.column('volume_created', sa.Boolean))
_vms = sa.table('vms', sa.column('id', sa.String), sa.column('name', sa.String),
                sa.column('cluster_id', sa.String), sa.column('created_at', sa.DateTime))
_clusters = sa.table('clusters', sa.column('id', sa.String), sa.column('mac_pool', sa.JSON))
_audit = sa.table('audit_log', sa.column('time', sa.DateTime(timezone=True)),
                  sa.column('severity', sa.String), sa.column('entity_type', sa.String),
                  sa.column('entity_name', sa.String), sa.column('message', sa.Text))
# What a cluster without its own ranges draws from (engine_lib.macpool.DEFAULT_RANGES then).
_DEFAULT_POOL = ["56:6f:4b:00:00:00-56:6f:4b:ff:ff:ff"]


def _number(mac):
    return int(mac.replace(':', '').replace('-', ''), 16)


def _text(value):
    return ':'.join(f'{value:012x}'[i:i + 2] for i in range(0, 12, 2))


def _free(pool, used):
    """The lowest address of ``pool`` not in ``used`` (a set of ints); None when full."""
    for text in pool:
        first, _, last = text.partition('-')
        candidate, end = _number(first), _number(last)
        while candidate <= end and candidate in used:
            candidate += 1
        if candidate <= end:
            return candidate
    return None


def _unique_macs(conn):
    rows = conn.execute(
        sa.select(_devices.c.id, _devices.c.spec, _vms.c.name, _clusters.c.mac_pool)
        .join(_vms, _vms.c.id == _devices.c.vm_id)
        .join(_clusters, _clusters.c.id == _vms.c.cluster_id)
        .where(_devices.c.type == 'interface', _devices.c.managed.is_not(False))
        .order_by(_vms.c.created_at, _vms.c.name, _devices.c.position, _devices.c.id)).all()
    used = {_number(row.spec['mac']) for row in rows if (row.spec or {}).get('mac')}
    seen = set()
    for row in rows:
        spec = dict(row.spec or {})
        mac = spec.get('mac')
        if not mac:
            continue
        mac = mac.lower()
        if mac in seen:
            new = _free(row.mac_pool or _DEFAULT_POOL, used)
            if new is None:
                raise RuntimeError(
                    f"VM '{row.name}' shares MAC {mac} with another NIC and its cluster's "
                    "MAC pool has no free address left to give it; widen the pool and upgrade "
                    "again")
            used.add(new)
            old, mac = mac, _text(new)
            conn.execute(_audit.insert().values(
                time=datetime.datetime.now(datetime.UTC), severity='warning', entity_type='vm',
                entity_name=row.name, message=f"NIC {spec.get('name', '?')}: MAC {old} was "
                f"also another VM's; it is now {mac} (from the next start if the VM runs)"))
        seen.add(mac)
        spec['mac'] = mac
        conn.execute(_devices.update().where(_devices.c.id == row.id)
                     .values(spec=spec, mac=mac))


def upgrade():
    with op.batch_alter_table('vm_devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mac', sa.String(length=17), nullable=True))
        batch_op.add_column(sa.Column('volume_created', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    conn = op.get_bind()
    _unique_macs(conn)
    # A disk the engine has matched in a live domain (it has our alias) ran from its volume.
    conn.execute(_devices.update().where(_devices.c.type == 'disk', _devices.c.alias != '')
                 .values(volume_created=True))
    with op.batch_alter_table('vm_devices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vm_devices_mac'), ['mac'], unique=True)


def downgrade():
    with op.batch_alter_table('vm_devices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vm_devices_mac'))
        batch_op.drop_column('volume_created')
        batch_op.drop_column('mac')
