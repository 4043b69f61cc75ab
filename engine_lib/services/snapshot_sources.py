"""A snapshot as the source of a new VM or template version.

The copy takes the VM's settings as they were when the snapshot was taken
(``Snapshot.vm_config``, in vm_sources.settings_of's form) and, for each disk,
the volume the snapshot froze, read through the volumes below it and flattened
by the agent (``copy_volume``): the frozen volume is never shared with the copy.

A frozen volume is never written while a newer volume is on it, so the source VM
may run meanwhile. A merge or revert would change the chain under the copy, so
the snapshot is locked (operation ``clone``) from the commit that plans the copy
until it ends; the contract's one-operation-per-VM rule then refuses them. A lock
whose copier died is freed by ``reconcile`` in the engine loop.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine_lib.model import Host, Snapshot, Vm, Volume
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError, NotFound
from engine_lib.services import vm_sources
from engine_lib.services.host_records import HostRef

OPERATION = "clone"
# A recorded device's identity (vm_dict's form), never a copy's; a NIC's MAC and bridge
# neither (settings_of leaves them out: the new VM gets its own).
_DEVICE_OWN = ("id", "alias")
_NIC_OWN = (*_DEVICE_OWN, "mac", "bridge")


def find(session: Session, vm: Vm, *, snapshot_id: str = "", snapshot_name: str = "",
         vm_field: str = "snapshot_vm") -> Snapshot:
    """The snapshot of ``vm`` with id ``snapshot_id``, or the one whose description is
    ``snapshot_name`` (ovirt_vm's meaning), locked for the copy in ``session``.
    InvalidSpec naming the option when there is none or the name is ambiguous;
    Conflict while another snapshot operation runs on the VM."""
    rows = list(session.scalars(select(Snapshot).where(Snapshot.vm_id == vm.id)
                                .order_by(Snapshot.created_at).with_for_update()))
    busy = next((s for s in rows if s.status == "locked"), None)
    if busy is not None:
        raise Conflict(f"VM '{vm.name}' has a snapshot operation running ({busy.operation} of "
                       f"snapshot {busy.id}); wait for it to end", vm=vm.name)
    if snapshot_id:
        found = [s for s in rows if s.id == snapshot_id]
        if not found:
            raise InvalidSpec("snapshot_id", f"VM '{vm.name}' ({vm_field}) has no snapshot "
                                             f"{snapshot_id}")
    else:
        found = [s for s in rows if s.description == snapshot_name]
        if not found:
            known = ", ".join(repr(s.description) for s in rows) or "none"
            raise InvalidSpec("snapshot_name", f"VM '{vm.name}' ({vm_field}) has no snapshot "
                                               f"described {snapshot_name!r} (snapshots: {known})")
        if len(found) > 1:
            raise InvalidSpec("snapshot_name", f"{len(found)} snapshots of VM '{vm.name}' are "
                                               f"described {snapshot_name!r} ("
                                               f"{', '.join(s.id for s in found)}); give "
                                               "snapshot_id instead")
    snapshot = found[0]
    if snapshot.status != "ok":
        raise Conflict(f"snapshot {snapshot.id} of VM '{vm.name}' is {snapshot.status}; "
                       "nothing was changed", vm=vm.name)
    return snapshot


def settings(snapshot: Snapshot, vm: Vm) -> dict:
    """The VM's settings when the snapshot was taken, in settings_of's form; a setting
    the snapshot did not record takes the VM's current value. ``vm_config`` may be
    settings_of's form or vm_dict's (which records fewer settings, a partial ``cpu``,
    and each device's id, alias and MAC: never a copy's). Disks are the snapshot's
    (their settings then, their volume the frozen one)."""
    current = vm_sources.settings_of(vm)
    config = snapshot.vm_config or {}
    out = {key: config.get(key, value) for key, value in current.items()}
    if isinstance(config.get("cpu"), dict):
        out["cpu"] = {**current["cpu"], **{k: v for k, v in config["cpu"].items()
                                           if k in current["cpu"]}}
    out["nics"] = [{k: v for k, v in nic.items() if k not in _NIC_OWN} for nic in out["nics"]]
    frozen = {d["disk"]: d for d in snapshot.disks}
    then = {d["name"]: {k: v for k, v in d.items() if k not in _DEVICE_OWN}
            for d in config.get("disks") or current["disks"]}
    now = {d["name"]: d for d in current["disks"]}
    disks = []
    for name, disk in then.items():
        if "lun" in disk:
            disks.append(dict(disk))  # a LUN is not copied (as a clone of a stopped VM)
            continue
        if name not in frozen:
            raise Conflict(f"snapshot {snapshot.id} of VM '{vm.name}' froze no volume of disk "
                           f"'{name}'; it cannot be copied")
        disks.append({**now.get(name, {}), **disk, "image_id": frozen[name]["image_id"],
                      "volume_id": frozen[name]["volume_id"]})
    out["disks"] = disks
    return out


def disk_source(session: Session, snapshot: Snapshot, disk: dict) -> dict:
    """Where a snapshot disk's data is, for a flattened copy (vm_sources' form)."""
    volume = session.get(Volume, disk["volume_id"])
    if volume is None:
        raise Conflict(f"the volume {disk['volume_id']} that snapshot {snapshot.id} froze of "
                       f"disk '{disk['name']}' is not registered; nothing was changed")
    return vm_sources.volume_source(volume)


def lock(snapshot: Snapshot) -> None:
    snapshot.status, snapshot.operation = "locked", OPERATION


def on_job(engine, snapshot_id: str, host: str) -> Callable[[str], None]:
    """Note each copy's agent job on the locked snapshot (reconcile follows it)."""
    def record(job: str) -> None:
        with engine.store.transaction() as session:
            snapshot = session.get(Snapshot, snapshot_id)
            if snapshot is not None and snapshot.operation == OPERATION:
                snapshot.job_id, snapshot.job_host = job, host
    return record


def release(engine, snapshot_id: str) -> None:
    """End the copy's lock (the snapshot may have gone with its VM meanwhile)."""
    with engine.store.transaction() as session:
        snapshot = session.get(Snapshot, snapshot_id)
        if snapshot is not None and snapshot.operation == OPERATION:
            snapshot.status, snapshot.operation = "ok", ""
            snapshot.job_id = snapshot.job_host = ""


def reconcile(engine, seen: dict[str, int]) -> list[str]:
    """Free copy locks whose copier died (its engine process killed): the row unchanged
    since the previous round (``seen``: snapshot id -> row version, kept by the caller)
    and its agent job not running. A live copy changes the row at each disk's copy and
    waits only on a running job. Returns the snapshot ids freed."""
    with engine.store.transaction(commit=False) as session:
        rows = session.execute(select(Snapshot.id, Snapshot.version, Snapshot.job_id,
                                      Snapshot.job_host).where(
            Snapshot.status == "locked", Snapshot.operation == OPERATION)).all()
        hosts = {h.name: HostRef.of(h) for h in session.scalars(select(Host))}
    previous = dict(seen)
    seen.clear()
    seen.update({row[0]: row[1] for row in rows})
    freed = []
    for snapshot_id, version, job_id, host_name in rows:
        if previous.get(snapshot_id) != version:
            continue
        host = hosts.get(host_name)
        if job_id and host is not None:
            try:
                if engine.agent(host.address, host.port).job(job_id).get("status") \
                        == "running":
                    continue
            except NotFound:
                pass
            except KestrelError:
                continue  # unreachable: ask again next round
        release(engine, snapshot_id)
        seen.pop(snapshot_id, None)
        freed.append(snapshot_id)
    return freed


class CopyReconcile:
    """The engine loop's pass over copy locks, keeping ``reconcile``'s round-to-round
    view of the rows."""

    def __init__(self, engine):
        self.engine = engine
        self.seen: dict[str, int] = {}

    def cycle(self) -> list[str]:
        return reconcile(self.engine, self.seen)
