"""Taking, listing and reverting a VM's snapshots.

Taking snapshot S of a disk whose top volume is V freezes V and puts a new qcow2
overlay N on it (same image, as VDSM does): S names V, the disk's top becomes N.
A running VM's overlays are made live by its agent (external, disk-only, quiesced
when the guest agent answers; with ``use_memory`` its memory is saved too); a
stopped VM's by an agent of a host that sees the storage domain.

The rows are written first, locked (the snapshot ``locked``/``create`` and the new
volumes ``locked``), in one transaction; the agent call follows; a second
transaction makes them ok and moves each disk's top. A crash in between leaves a
lock that snapshot_reconcile settles from what the agent reports. The lock is also
the one-operation-per-VM rule: a second snapshot, revert, merge or backup of the
same VM meanwhile is a Conflict naming the one running.

Reverting (stopped VMs only) discards the volumes above S's frozen ones and the
snapshots newer than S (oVirt's commit removes them too), and gives each disk a new
empty top on the frozen volume; S stays, to revert to again. A snapshot with memory
starts the VM from that memory, which is kept for the next revert.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from engine_lib.domxml.render import metadata_xml
from engine_lib.model import DeviceType, Host, Snapshot, Vm, VmDevice, Volume, utcnow
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError, NotFound
from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.services import hibernation, job_context, vm_config, vm_sources
from engine_lib.services.common import audit, get_vm, outcome_unknown, retry_on_conflict
from engine_lib.services.hibernation import memory_volume_for
from engine_lib.services.host_records import HostRef
from engine_lib.services.images import agent_volume
from engine_lib.services.results import Outcome
from engine_lib.services.volumes import chain_refs

__all__ = ["SnapshotService", "create", "get", "list_for", "revert", "snapshot_dict",
           "check_unlocked", "check_snapshottable", "BUSY_STATUSES"]

Progress = Callable[[dict], None] | None

# A VM in one of these is between hosts or between states: its chain is not to be touched.
BUSY_STATUSES = frozenset({VmStatus.MIGRATING_FROM, VmStatus.MIGRATING_TO,
                           VmStatus.WAIT_FOR_LAUNCH, VmStatus.POWERING_UP,
                           VmStatus.SAVING_STATE, VmStatus.RESTORING_STATE})
_RUNNING = frozenset({VmStatus.UP, VmStatus.PAUSED})


def snapshot_dict(snapshot: Snapshot, vm_name: str | None = None) -> dict:
    return {"id": snapshot.id, "vm": vm_name if vm_name is not None else _vm_name(snapshot),
            "description": snapshot.description, "status": snapshot.status,
            "operation": snapshot.operation, "use_memory": snapshot.use_memory,
            "quiesced": snapshot.quiesced, "vm_running": snapshot.vm_running,
            "created_at": snapshot.created_at.isoformat() if snapshot.created_at else None,
            "disks": [{"disk": d["disk"], "volume_id": d["volume_id"]} for d in snapshot.disks],
            "memory": bool(snapshot.memory_volume)}


def _vm_name(snapshot: Snapshot) -> str:
    session = Session.object_session(snapshot)
    vm = session.get(Vm, snapshot.vm_id) if session is not None else None
    return vm.name if vm is not None else ""


def check_unlocked(session: Session, vm: Vm, doing: str) -> None:
    """Conflict when an operation already holds one of the VM's snapshots."""
    held = session.scalars(select(Snapshot).where(Snapshot.vm_id == vm.id,
                                                  Snapshot.status == "locked")).first()
    if held is not None:
        raise Conflict(f"VM '{vm.name}': cannot {doing}: snapshot {held.id} "
                       f"({held.description or 'no description'}) is locked by a running "
                       f"{held.operation or 'operation'}; wait for it to finish",
                       vm=vm.name, snapshot=held.id, operation=held.operation)


def check_snapshottable(vm: Vm, doing: str) -> None:
    """Conflict when the VM is migrating, starting or saving/restoring its memory."""
    if vm.status in BUSY_STATUSES:
        raise Conflict(f"VM '{vm.name}' is {vm.status}: cannot {doing} until it is Up or "
                       "Down", vm=vm.name, status=str(vm.status))


def _claim(vm: Vm) -> None:
    """Bump the VM row's version: of two operations locking one VM at once, the second
    commit fails (StaleDataError), and its retry sees the first one's lock."""
    flag_modified(vm, "description")


def _disks(vm: Vm) -> list[VmDevice]:
    """The disks a snapshot covers: those with a volume on a storage domain (a LUN is a
    host's block device, a cdrom an ISO: neither is ours to freeze)."""
    return [d for d in vm.devices_of(DeviceType.DISK)
            if "lun" not in d.spec and d.spec.get("volume_id") and d.spec.get("storage_domain")]


def frozen_volumes(session: Session, vm: Vm) -> list[Volume]:
    """The volumes under the VM's disk tops that are its own (its snapshots' frozen
    volumes, in the disks' images; a template's base is not), nearest first per disk."""
    out = []
    for device in _disks(vm):
        top = session.get(Volume, device.spec["volume_id"])
        if top is not None:
            out += [v for v in top.chain() if v.template_id is None
                    and v.image_id == top.image_id]
    return out


def _top(session: Session, device: VmDevice) -> Volume:
    volume = session.get(Volume, device.spec["volume_id"])
    if volume is None:
        raise Conflict(f"disk '{device.name}' names volume {device.spec['volume_id']}, which "
                       "is not registered", disk=device.name)
    return volume


def _set_top(device: VmDevice, top: Volume) -> None:
    """The disk now writes ``top``; its spec's chain follows the rows below it."""
    spec = dict(device.spec)
    spec["volume_id"], spec["image_id"] = top.id, top.image_id
    spec["format"] = top.format
    chain = chain_refs(top)
    if chain:
        spec["chain"] = chain
    else:
        spec.pop("chain", None)
    device.spec = spec


def _helper_host(engine, domain: str) -> HostRef:
    """An Up host that reports the storage domain available (by name, first)."""
    with engine.store.transaction(commit=False) as session:
        for host in session.scalars(select(Host).where(Host.status == HostStatus.UP)
                                    .order_by(Host.name)):
            if any(isinstance(e, dict) and e.get("name") == domain and e.get("available")
                   for e in host.storage_domains or []):
                return HostRef.of(host)
    raise Conflict(f"no Up host reports storage domain '{domain}' available; nothing was "
                   "changed there", storage_domain=domain)


def _config(vm: Vm) -> dict:
    """The VM's settings as a clone or template from the snapshot takes them (all of
    them: firmware, graphics and the whole cpu too, so a clone is the VM as it was)."""
    return vm_sources.settings_of(vm)


def _check_description(description: Any) -> str:
    if not isinstance(description, str):
        raise InvalidSpec("description", f"must be a string (got {description!r})")
    return description


def _check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpec(field, f"must be true or false (got {value!r})")
    return value


def _snapshot_of(session: Session, vm: Vm, snapshot_id: str) -> Snapshot:
    if not isinstance(snapshot_id, str) or not snapshot_id:
        raise InvalidSpec("snapshot_id", f"must be a snapshot id (got {snapshot_id!r})")
    snapshot = session.get(Snapshot, snapshot_id)
    if snapshot is None or snapshot.vm_id != vm.id:
        raise NotFound(f"snapshot of VM '{vm.name}'", snapshot_id)
    return snapshot


# -- reading ----------------------------------------------------------------------------------


def list_for(engine, vm_name: str) -> list[dict]:
    """The VM's snapshots, oldest first (the running VM itself is not one)."""
    with engine.store.transaction(commit=False) as session:
        vm = get_vm(session, vm_name)
        rows = session.scalars(select(Snapshot).where(Snapshot.vm_id == vm.id)
                               .order_by(Snapshot.created_at, Snapshot.id))
        return [snapshot_dict(s, vm.name) for s in rows]


def get(engine, vm_name: str, snapshot_id: str) -> dict:
    with engine.store.transaction(commit=False) as session:
        vm = get_vm(session, vm_name)
        return snapshot_dict(_snapshot_of(session, vm, snapshot_id), vm.name)


# -- taking -----------------------------------------------------------------------------------


def create(engine, vm_name: str, *, description: str = "", use_memory: bool = False,
           progress: Progress = None) -> dict:
    """Snapshot every disk of the VM (see the module doc); returns the snapshot."""
    _check_description(description)
    _check_bool("use_memory", use_memory)
    job = job_context.current()
    job.progress(0, "locking")
    plan = _lock_create(engine, vm_name, description, use_memory)
    try:
        if plan["host"] is not None:
            job.progress(20, f"snapshotting on host {plan['host'].name}")
            result = _take_live(engine, plan)
        else:
            job.progress(20, "creating overlays")
            result = _take_offline(engine, plan)
    except KestrelError as err:
        if not outcome_unknown(err):
            _abandon(engine, plan["snapshot"], f"snapshot failed: {err.message}")
        raise
    entity = _finish_create(engine, plan["snapshot"], result.get("quiesced"))
    job.progress(100, "done")
    return entity


@retry_on_conflict
def _lock_create(engine, vm_name: str, description: str, use_memory: bool) -> dict:
    with engine.store.transaction() as session:
        vm = get_vm(session, vm_name)
        check_snapshottable(vm, "take a snapshot")
        check_unlocked(session, vm, "take a snapshot")
        running = vm.status in _RUNNING and vm.run_on_host is not None
        if not running and vm.status != VmStatus.DOWN:
            raise Conflict(f"VM '{vm.name}' is {vm.status}: a snapshot is taken of a running "
                           "(Up, Paused) or a stopped (Down) VM", vm=vm.name,
                           status=str(vm.status))
        if use_memory and not running:
            raise InvalidSpec("use_memory", f"VM '{vm.name}' is {vm.status}: only a running "
                                            "VM has memory to save")
        disks = _disks(vm)
        if not disks and not use_memory:
            raise Conflict(f"VM '{vm.name}' has no disk on a storage domain to snapshot",
                           vm=vm.name)
        snapshot = Snapshot(id=str(uuid.uuid4()), vm_id=vm.id, description=description,
                            status="locked", operation="create", use_memory=use_memory,
                            vm_running=running, vm_config=_config(vm), disks=[],
                            memory_volume=memory_volume_for(session, vm) if use_memory else None,
                            job_host=vm.run_on_host.name if running else "")
        entries, body_disks = [], []
        for device in disks:
            frozen = _top(session, device)
            if frozen.status != "ok":
                raise Conflict(f"disk '{device.name}' of VM '{vm.name}': its volume "
                               f"{frozen.id} is {frozen.status}", vm=vm.name, disk=device.name)
            overlay = Volume(id=str(uuid.uuid4()), image_id=frozen.image_id,
                             storage_domain=frozen.storage_domain, parent=frozen, format="qcow2",
                             size_mib=frozen.size_mib, content_type="data", name="",
                             description="", status="locked", readonly=False, sha256="")
            session.add(overlay)
            entries.append({"disk": device.name, "image_id": frozen.image_id,
                            "volume_id": frozen.id, "overlay": overlay.id})
            body_disks.append({"alias": device.user_alias, "volume": agent_volume(overlay),
                               "parent": agent_volume(frozen)})
        snapshot.disks = entries
        session.add(snapshot)
        _claim(vm)
        audit(session, "vm", vm.name, f"snapshot {snapshot.id} "
              f"({description or 'no description'}) started"
              + (" with memory" if use_memory else ""))
        session.flush()
        return {"snapshot": snapshot.id, "vm": vm.name, "vm_id": vm.id,
                "host": HostRef.of(vm.run_on_host) if running else None,
                "disks": body_disks, "memory_volume": snapshot.memory_volume}


def _new_chain_metadata(engine, vm_name: str, snapshot_id: str) -> str:
    """The <kestrel:vm> metadata for the chain the snapshot makes, rendered from a VM whose
    disks already name their overlays (in a transaction thrown away)."""
    with engine.store.transaction(commit=False) as session:
        vm = get_vm(session, vm_name)
        snapshot = session.get(Snapshot, snapshot_id)
        _move_tops(session, vm, {d["disk"]: d["overlay"] for d in snapshot.disks})
        return metadata_xml(vm)


def _move_tops(session: Session, vm: Vm, tops: dict[str, str]) -> None:
    for device in _disks(vm):
        if device.name in tops:
            _set_top(device, session.get(Volume, tops[device.name]))


def _take_live(engine, plan: dict) -> dict:
    host: HostRef = plan["host"]
    body = {"snapshot": plan["snapshot"], "disks": plan["disks"],
            "memory_volume": plan["memory_volume"], "quiesce": True,
            "metadata": _new_chain_metadata(engine, plan["vm"], plan["snapshot"])}
    result: dict = engine.agent(host.address, host.port).create_snapshot(plan["vm_id"], body)
    return result


def _take_offline(engine, plan: dict) -> dict:
    made: list[tuple[HostRef, dict]] = []
    try:
        for disk in plan["disks"]:
            host = _helper_host(engine, disk["volume"]["domain"])
            engine.agent(host.address, host.port).create_overlay(disk["volume"], disk["parent"])
            made.append((host, disk["volume"]))
    except KestrelError:
        for host, volume in made:  # the overlays made so far: nothing reads them yet
            try:
                engine.agent(host.address, host.port).delete_volumes([volume])
            except KestrelError:
                pass  # an orphan file, never in a chain; the rows go with _abandon
        raise
    return {"quiesced": None}


@retry_on_conflict
def _finish_create(engine, snapshot_id: str, quiesced: bool | None) -> dict:
    with engine.store.transaction() as session:
        snapshot = session.get(Snapshot, snapshot_id)
        if snapshot is None or snapshot.status != "locked":
            raise KestrelError(f"snapshot {snapshot_id} was settled by someone else meanwhile")
        vm = session.get(Vm, snapshot.vm_id)
        finish_create_rows(session, vm, snapshot, quiesced)
        audit(session, "vm", vm.name, f"snapshot {snapshot.id} taken"
              + ("" if quiesced is None else " (quiesced)" if quiesced else
                 " (not quiesced: the guest agent did not freeze the filesystems)"))
        session.flush()
        return snapshot_dict(snapshot, vm.name)


def finish_create_rows(session: Session, vm: Vm, snapshot: Snapshot,
                       quiesced: bool | None) -> None:
    """The overlays exist and the VM (if running) writes them: record that."""
    entries = []
    for entry in snapshot.disks:
        overlay = session.get(Volume, entry["overlay"])
        if overlay is not None:
            overlay.status = "ok"
        entries.append({k: v for k, v in entry.items() if k != "overlay"})
    _move_tops(session, vm, {d["disk"]: d["overlay"] for d in snapshot.disks})
    snapshot.disks = entries
    snapshot.status, snapshot.operation, snapshot.job_host = "ok", "", ""
    snapshot.quiesced = quiesced
    _claim(vm)


@retry_on_conflict
def _abandon(engine, snapshot_id: str, why: str) -> None:
    with engine.store.transaction() as session:
        snapshot = session.get(Snapshot, snapshot_id)
        if snapshot is not None:
            vm = session.get(Vm, snapshot.vm_id)
            abandon_create_rows(session, snapshot)
            audit(session, "vm", vm.name, why, "error")


def abandon_create_rows(session: Session, snapshot: Snapshot) -> None:
    """The overlays were not made (or were removed): forget the snapshot and its rows."""
    for entry in snapshot.disks:
        overlay = session.get(Volume, entry.get("overlay", ""))
        if overlay is not None and overlay.status == "locked":
            session.delete(overlay)
    session.delete(snapshot)


# -- reverting --------------------------------------------------------------------------------


def revert(engine, vm_name: str, snapshot_id: str, *, progress: Progress = None) -> dict:
    """Bring the stopped VM's disks back to the snapshot (see the module doc). Returns
    the snapshot, the ids of the snapshots removed with it (``removed_snapshots``) and,
    for a memory snapshot, the VM started again (``started_vm``)."""
    job = job_context.current()
    job.progress(0, "locking")
    plan = _lock_revert(engine, vm_name, snapshot_id)
    try:
        for disk in plan["disks"]:
            host = _helper_host(engine, disk["new"]["domain"])
            engine.agent(host.address, host.port).create_overlay(disk["new"], disk["parent"])
        job.progress(40, "new tops created")
    except KestrelError as err:
        _unlock_revert(engine, snapshot_id, plan, f"revert failed: {err.message}")
        raise
    result = _finish_revert(engine, snapshot_id, plan)
    delete_files(engine, plan["discard"])
    job.progress(70, "reverted")
    if plan["memory"]:
        hibernation.resume_from_snapshot(engine, vm_name, plan["memory"], snapshot_id)
        with job_context.part(70, 100, "resuming from the snapshot's memory"):
            result["started_vm"] = engine.vms.ensure({"name": vm_name}, state="running").entity
    job.progress(100, "done")
    return result


@retry_on_conflict
def _lock_revert(engine, vm_name: str, snapshot_id: str) -> dict:
    with engine.store.transaction() as session:
        vm = get_vm(session, vm_name)
        snapshot = _snapshot_of(session, vm, snapshot_id)
        if vm.status != VmStatus.DOWN:
            raise Conflict(f"VM '{vm.name}' is {vm.status}: stop it first (a snapshot is "
                           "reverted to on a stopped VM)", vm=vm.name, status=str(vm.status))
        check_unlocked(session, vm, f"revert to snapshot {snapshot_id}")
        if snapshot.status != "ok":
            raise Conflict(f"snapshot {snapshot.id} of VM '{vm.name}' is {snapshot.status}",
                           vm=vm.name, snapshot=snapshot.id)
        devices = {d.name: d for d in _disks(vm)}
        disks, discard, new_tops = [], [], {}
        for entry in snapshot.disks:
            device = devices.get(entry["disk"])
            if device is None:
                continue  # the disk was removed since: nothing of it to revert
            frozen = session.get(Volume, entry["volume_id"])
            above = _above(session, device, entry["volume_id"])
            if frozen is None or above is None:
                raise Conflict(f"disk '{entry['disk']}' of VM '{vm.name}' no longer has "
                               f"volume {entry['volume_id']} in its chain; cannot revert to "
                               f"snapshot {snapshot.id}", vm=vm.name, disk=entry["disk"])
            new = Volume(id=str(uuid.uuid4()), image_id=frozen.image_id,
                         storage_domain=frozen.storage_domain, parent=frozen, format="qcow2",
                         size_mib=frozen.size_mib, content_type="data", name="",
                         description="", status="locked", readonly=False, sha256="")
            session.add(new)
            new_tops[device.name] = new.id
            discard += [v.id for v in above]
            disks.append({"disk": device.name, "new": agent_volume(new),
                          "parent": agent_volume(frozen)})
        newer = [s for s in session.scalars(select(Snapshot).where(
            Snapshot.vm_id == vm.id, Snapshot.id != snapshot.id)) if _newer(s, snapshot)]
        snapshot.status, snapshot.operation = "locked", "revert"
        snapshot.job_id = ""
        # Remembered on the row so a crash before the second transaction can be undone.
        snapshot.vm_config = {**snapshot.vm_config, "_revert": {"tops": new_tops,
                                                              "at": utcnow().isoformat()}}
        _claim(vm)
        audit(session, "vm", vm.name, f"reverting to snapshot {snapshot.id} started")
        files = [agent_volume(session.get(Volume, vid)) for vid in discard]
        files += [dict(s.memory_volume) for s in newer if s.memory_volume]
        return {"disks": disks, "tops": new_tops, "discard": files, "discard_ids": discard,
                "newer": [s.id for s in newer],
                "memory": dict(snapshot.memory_volume) if snapshot.use_memory
                and snapshot.memory_volume else None}


def _newer(other: Snapshot, than: Snapshot) -> bool:
    return (other.created_at, other.id) > (than.created_at, than.id)


def _above(session: Session, device: VmDevice, frozen_id: str) -> list[Volume] | None:
    """The disk's volumes above ``frozen_id``, top first; None when it is not in the chain."""
    above, volume = [], _top(session, device)
    while volume is not None and volume.id != frozen_id:
        above.append(volume)
        volume = volume.parent
    return above if volume is not None else None


@retry_on_conflict
def _unlock_revert(engine, snapshot_id: str, plan: dict, why: str) -> None:
    with engine.store.transaction() as session:
        snapshot = session.get(Snapshot, snapshot_id)
        vm = session.get(Vm, snapshot.vm_id)
        unlock_revert_rows(session, snapshot)
        audit(session, "vm", vm.name, why, "error")
    delete_files(engine, [d["new"] for d in plan["disks"]])


def unlock_revert_rows(session: Session, snapshot: Snapshot) -> None:
    """A revert that never switched the disks: drop its new tops, keep everything else."""
    pending = snapshot.vm_config.get("_revert", {})
    for volume_id in pending.get("tops", {}).values():
        volume = session.get(Volume, volume_id)
        if volume is not None:
            session.delete(volume)
    snapshot.vm_config = {k: v for k, v in snapshot.vm_config.items() if k != "_revert"}
    snapshot.status, snapshot.operation = "ok", ""


@retry_on_conflict
def _finish_revert(engine, snapshot_id: str, plan: dict) -> dict:
    with engine.store.transaction() as session:
        snapshot = session.get(Snapshot, snapshot_id)
        vm = session.get(Vm, snapshot.vm_id)
        removed, kept = finish_revert_rows(session, vm, snapshot)
        audit(session, "vm", vm.name, f"reverted to snapshot {snapshot.id}"
              + (f"; newer snapshots removed: {', '.join(removed)}" if removed else "")
              + (f"; its settings were not restored: {kept}" if kept else ""),
              "warning" if kept else "info")
        session.flush()
        return {**snapshot_dict(snapshot, vm.name), "removed_snapshots": removed,
                "settings_restored": not kept, "settings_not_restored": kept}


def finish_revert_rows(session: Session, vm: Vm, snapshot: Snapshot) -> tuple[list[str], str]:
    """The new tops exist: switch the disks to them, drop what was above the frozen
    volumes and the newer snapshots, and give the VM its settings of then. Returns the
    removed snapshots' ids and why the settings were not restored ("" when they were)."""
    tops = snapshot.vm_config.get("_revert", {}).get("tops", {})
    devices = {d.name: d for d in _disks(vm)}
    discard: list[Volume] = []
    for disk, top_id in tops.items():
        new = session.get(Volume, top_id)
        device = devices.get(disk)
        if new is None or device is None:
            continue
        above = _above(session, device, new.parent_id or "") or []
        discard += above
        new.status = "ok"
        _set_top(device, new)
    newer = [s for s in session.scalars(select(Snapshot).where(
        Snapshot.vm_id == vm.id, Snapshot.id != snapshot.id)) if _newer(s, snapshot)]
    for other in newer:
        session.delete(other)
    session.flush()
    for volume in discard:  # top first: each is the parent of none left
        session.delete(volume)
        session.flush()
    snapshot.vm_config = {k: v for k, v in snapshot.vm_config.items() if k != "_revert"}
    snapshot.status, snapshot.operation = "ok", ""
    _claim(vm)
    return sorted(s.id for s in newer), _restore_settings(session, vm, snapshot.vm_config)


def _restore_settings(session: Session, vm: Vm, config: dict) -> str:
    """The VM's settings as the snapshot recorded them (memory, cpu, firmware, devices
    but its disks and NICs: the disks are the reverted chains, the NICs keep their MACs),
    as oVirt and Proxmox restore a snapshot's configuration; a memory snapshot resumes
    only on the VM it was saved from. Why they were not, or ""."""
    if "firmware" not in config:  # an older snapshot's partial record: leave them alone
        return "the snapshot recorded only part of the VM's settings"
    spec = {k: v for k, v in config.items() if k not in ("disks", "nics")}
    try:
        with session.begin_nested():
            vm_config.apply(session, vm, spec)
    except KestrelError as err:  # a setting no longer valid (an ISO removed since...)
        return err.message
    return ""


def delete_files(engine, files: list[dict], strict: bool = False) -> None:
    """Delete volume files through a host that sees their domain. Not ``strict``: best
    effort, a file left over is an orphan no chain reads (its row is gone)."""
    for volume in files:
        try:
            host = _helper_host(engine, volume["domain"])
            engine.agent(host.address, host.port).delete_volumes([volume])
        except KestrelError:
            if strict:
                raise


# -- the facade -------------------------------------------------------------------------------


class SnapshotService:
    """engine.snapshots: what the API, the modules and the CLI call."""

    def __init__(self, engine):
        self.engine = engine

    def info(self, vm: str, *, snapshot_id: str = "", description: str = "") -> list[dict]:
        out = list_for(self.engine, vm)
        if snapshot_id:
            out = [s for s in out if s["id"] == snapshot_id]
        if description:
            out = [s for s in out if s["description"] == description]
        return out

    def create(self, vm: str, *, snapshot_id: str = "", description: str = "",
               use_memory: bool = False, check_mode: bool = False,
               progress: Progress = None) -> Outcome:
        """A new snapshot; with ``snapshot_id``, that snapshot as it is (no change)."""
        if snapshot_id:
            return Outcome(False, get(self.engine, vm, snapshot_id))
        if check_mode:
            with self.engine.store.transaction(commit=False) as session:
                found = get_vm(session, vm)
                check_snapshottable(found, "take a snapshot")
                check_unlocked(session, found, "take a snapshot")
            return Outcome(True, {"vm": vm, "description": description,
                                  "use_memory": use_memory, "status": "ok"})
        return Outcome(True, create(self.engine, vm, description=description,
                                    use_memory=use_memory, progress=progress))

    def restore(self, vm: str, snapshot_id: str, *, check_mode: bool = False,
                progress: Progress = None) -> Outcome:
        if check_mode:
            return Outcome(True, get(self.engine, vm, snapshot_id))
        return Outcome(True, revert(self.engine, vm, snapshot_id, progress=progress))
