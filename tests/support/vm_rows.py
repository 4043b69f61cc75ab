"""Many VMs in an engine's database at once: copies of one made through vms.ensure.

Lists and their benchmark need thousands of VMs; ensuring each would cost minutes. The
copies are the source's row and devices with new ids, names and MACs (outside the
engine's pools, so allocations never meet them), inserted in bulk. They share the
source's volumes, so they are for reading, not starting.
"""

from __future__ import annotations

from sqlalchemy import func, insert, select

from engine_lib.model import Vm, VmDevice, new_id

_BATCH = 2000
_MAC = "02:6b"


def _columns(row) -> dict:
    return {c.key: getattr(row, c.key) for c in row.__mapper__.column_attrs}


def copy_vm(engine, source: str, count: int, prefix: str = "vm-") -> list[str]:
    """Insert ``count`` copies of VM ``source`` named ``<prefix><n:05d>``; their names."""
    names = [f"{prefix}{n:05d}" for n in range(count)]
    with engine.store.transaction() as session:
        vm = session.scalars(select(Vm).where(Vm.name == source)).one()
        template, devices = _columns(vm), [_columns(d) for d in vm.devices]
        # Numbered on from the copies already made (02:6b:... is theirs alone).
        serial = session.scalar(select(func.count()).where(VmDevice.mac.like(f"{_MAC}:%")))
        for start in range(0, count, _BATCH):
            vms, rows = [], []
            for name in names[start:start + _BATCH]:
                vm_id = new_id()
                vms.append({**template, "id": vm_id, "name": name, "version": 1})
                for device in devices:
                    spec, mac = dict(device["spec"]), device["mac"]
                    if mac is not None:
                        serial += 1
                        mac = spec["mac"] = _MAC + "".join(f":{b:02x}" for b in serial.to_bytes(4))
                    rows.append({**device, "id": new_id(), "vm_id": vm_id, "spec": spec,
                                 "mac": mac})
            session.execute(insert(Vm), vms)
            if rows:
                session.execute(insert(VmDevice), rows)
    return names
