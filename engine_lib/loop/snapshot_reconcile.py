"""Settle snapshots left locked by a create or a revert whose caller died.

Both hold the lock across synchronous agent calls only, and every agent call has a
total deadline (engine_lib.broker), so a lock older than the longest deadline plus a
margin has no caller left. Then:

- create of a running VM: the VM's live chains (GET chains on its host) say whether
  libvirt switched to the overlays: top == overlay on every disk -> the snapshot is
  finished in the database; on none -> the overlays (and the memory file) are deleted
  and the rows forgotten. A VM its host no longer runs, or disks that disagree, make
  the snapshot ``illegal`` for an operator to look at: guessing could lose writes.
- create of a stopped VM: nothing ran on the overlays (a start waits for the lock),
  so they are deleted and the rows forgotten.
- revert: the disks were never switched (that is the last, atomic step): the new
  tops are deleted and the snapshot is ok again, as before the revert.

A host that does not answer is asked again next round. Merge locks are
snapshot_merge's (it has agent jobs to follow).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from engine_lib.broker import HIBERNATE_TIMEOUT
from engine_lib.model import Host, Snapshot, Vm, Volume, utcnow
from engine_lib.protocol.errors import KestrelError, VmNotFound
from engine_lib.services import snapshots
from engine_lib.services.common import audit, retry_on_conflict
from engine_lib.services.host_records import HostRef

log = logging.getLogger("kestrel.engine.snapshots")
# The longest agent call a create or revert makes (a memory snapshot), and a margin.
STALE_AFTER = timedelta(seconds=HIBERNATE_TIMEOUT + 60)


class SnapshotReconcile:
    """The engine loop's pass (runner.every): reconcile at the host interval."""

    def __init__(self, engine):
        self.engine = engine

    def cycle(self) -> list[str]:
        return reconcile(self.engine)


def reconcile(engine, now: datetime | None = None) -> list[str]:
    """Settle every stale create/revert lock; returns the snapshot ids settled."""
    now = now or utcnow()
    with engine.store.transaction(commit=False) as session:
        stale = [(s.id, s.operation, s.vm_running, s.job_host)
                 for s in session.scalars(select(Snapshot).where(
                     Snapshot.status == "locked", Snapshot.operation.in_(("create", "revert"))))
                 if now - _locked_at(s) > STALE_AFTER]
    settled = []
    for snapshot_id, operation, running, host_name in stale:
        try:
            if operation == "revert":
                done = _undo_revert(engine, snapshot_id)
            elif running:
                done = _settle_live_create(engine, snapshot_id, host_name)
            else:
                done = _drop_create(engine, snapshot_id, "its overlays were never used")
        except KestrelError as err:
            log.warning("snapshot %s: %s; trying again next round", snapshot_id, err.message)
            continue
        if done:
            settled.append(snapshot_id)
    return settled


def _locked_at(snapshot: Snapshot) -> datetime:
    at = snapshot.created_at
    if snapshot.operation == "revert":
        at = datetime.fromisoformat(snapshot.vm_config.get("_revert", {}).get("at")
                                    or at.isoformat())
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _files(session, snapshot: Snapshot) -> list[dict]:
    files = []
    for entry in snapshot.disks:
        overlay = session.get(Volume, entry.get("overlay", ""))
        if overlay is not None:
            files.append({"domain": overlay.storage_domain, "image": overlay.image_id,
                          "volume": overlay.id})
    if snapshot.memory_volume:
        files.append(dict(snapshot.memory_volume))
    return files


def _settle_live_create(engine, snapshot_id: str, host_name: str) -> bool:
    with engine.store.transaction(commit=False) as session:
        snapshot = session.get(Snapshot, snapshot_id)
        if snapshot is None or snapshot.status != "locked":
            return False
        vm_id = snapshot.vm_id
        host = HostRef.of(session.scalars(select(Host).where(Host.name == host_name))
                          .one_or_none())
        overlays = {}
        for entry in snapshot.disks:
            overlay = session.get(Volume, entry.get("overlay", ""))
            if overlay is not None:
                overlays[entry["disk"]] = f"{overlay.image_id}/{overlay.id}"
        vm = session.get(Vm, vm_id)
        aliases = {d.name: d.user_alias for d in vm.devices} if vm is not None else {}
    if host is None:
        return _mark_illegal(engine, snapshot_id, f"its host {host_name} is gone")
    try:
        live = engine.agent(host.address, host.port).chains(vm_id)
    except VmNotFound:
        return _mark_illegal(engine, snapshot_id, f"host {host_name} no longer runs the VM")
    tops = {d["alias"]: (d["chain"] or [""])[0] for d in live.get("disks", [])}
    switched = [aliases.get(disk) in tops and tops[aliases[disk]] == path
                for disk, path in overlays.items()]
    if switched and all(switched):
        return _finish(engine, snapshot_id)
    if not any(switched):
        return _drop_create(engine, snapshot_id, "libvirt never switched to its overlays")
    return _mark_illegal(engine, snapshot_id, "some disks run on its overlays, some do not")


@retry_on_conflict
def _finish(engine, snapshot_id: str) -> bool:
    with engine.store.transaction() as session:
        snapshot = session.get(Snapshot, snapshot_id)
        if snapshot is None or snapshot.status != "locked":
            return False
        vm = session.get(Vm, snapshot.vm_id)
        snapshots.finish_create_rows(session, vm, snapshot, None)
        audit(session, "vm", vm.name, f"snapshot {snapshot_id}: its caller died after the VM "
              "switched to the overlays; recorded as taken", "warning")
        return True


def _drop_create(engine, snapshot_id: str, why: str) -> bool:
    with engine.store.transaction(commit=False) as session:
        snapshot = session.get(Snapshot, snapshot_id)
        if snapshot is None or snapshot.status != "locked":
            return False
        files = _files(session, snapshot)
    snapshots.delete_files(engine, files, strict=True)
    return _forget(engine, snapshot_id, why)


@retry_on_conflict
def _forget(engine, snapshot_id: str, why: str) -> bool:
    with engine.store.transaction() as session:
        snapshot = session.get(Snapshot, snapshot_id)
        if snapshot is None or snapshot.status != "locked":
            return False
        vm = session.get(Vm, snapshot.vm_id)
        snapshots.abandon_create_rows(session, snapshot)
        audit(session, "vm", vm.name, f"snapshot {snapshot_id}: its caller died; {why}, so "
              "the snapshot was removed", "warning")
        return True


@retry_on_conflict
def _mark_illegal(engine, snapshot_id: str, why: str) -> bool:
    with engine.store.transaction() as session:
        snapshot = session.get(Snapshot, snapshot_id)
        if snapshot is None or snapshot.status != "locked":
            return False
        snapshot.status = "illegal"
        vm = session.get(Vm, snapshot.vm_id)
        audit(session, "vm", vm.name, f"snapshot {snapshot_id}: its caller died and {why}; "
              "the snapshot is illegal: check the VM's disks", "error")
        return True


def _undo_revert(engine, snapshot_id: str) -> bool:
    with engine.store.transaction(commit=False) as session:
        snapshot = session.get(Snapshot, snapshot_id)
        if snapshot is None or snapshot.status != "locked":
            return False
        files = [{"domain": v.storage_domain, "image": v.image_id, "volume": v.id}
                 for v in (session.get(Volume, vid) for vid in
                           snapshot.vm_config.get("_revert", {}).get("tops", {}).values())
                 if v is not None]
    snapshots.delete_files(engine, files, strict=True)
    return _unlock_revert(engine, snapshot_id)


@retry_on_conflict
def _unlock_revert(engine, snapshot_id: str) -> bool:
    with engine.store.transaction() as session:
        snapshot = session.get(Snapshot, snapshot_id)
        if snapshot is None or snapshot.status != "locked":
            return False
        vm = session.get(Vm, snapshot.vm_id)
        snapshots.unlock_revert_rows(session, snapshot)
        audit(session, "vm", vm.name, f"revert to snapshot {snapshot_id}: its caller died "
              "before the disks were switched; the VM is as it was", "warning")
        return True
