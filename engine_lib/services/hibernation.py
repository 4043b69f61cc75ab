"""Suspend to disk (oVirt's hibernation), resume from it, and reboot, for VmService.

Suspending saves the guest's memory to a *memory volume* on a storage domain
(the one of the VM's first disk, else the first storage domain attached to its
cluster): the VM is then "Suspended", holds no host, and the Vm row records
where its memory is (``memory_volume``). Running it again restores that state
on a host the scheduler picks, which may be another one than before: the guest
continues, it does not boot. The agent deletes the memory volume once the
restore succeeded; stopping or removing a Suspended VM discards it.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select

from engine_lib.domxml.viewmodel import volume_refs
from engine_lib.model import Host, StorageDomain, StorageDomainCluster, Vm
from engine_lib.protocol.errors import Conflict, KestrelError, VmNotFound
from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.services.common import audit, get_vm, retry_on_conflict
from engine_lib.services.host_records import HostRef
from engine_lib.services.vm_records import vm_dict


def memory_volume_for(session, vm: Vm) -> dict:
    """Where to save the VM's memory: a new volume on a storage domain the VM can use."""
    refs = volume_refs(vm)
    domain = refs[0].domain if refs else session.scalars(
        select(StorageDomain.name).join(StorageDomainCluster,
                                        StorageDomainCluster.storage_domain_id == StorageDomain.id)
        .where(StorageDomainCluster.cluster_id == vm.cluster_id)
        .order_by(StorageDomain.name)).first()
    if not domain:
        raise Conflict(f"cannot suspend VM '{vm.name}': it has no disk on a storage domain and "
                       "its cluster has no storage domain attached, so there is nowhere to "
                       "save its memory", vm=vm.name)
    return {"domain": domain, "image": str(uuid.uuid4()), "volume": str(uuid.uuid4())}


def suspend(engine, name: str) -> dict:
    """Hibernate the running VM ``name``; returns its entity, Suspended."""
    with engine.store.transaction() as session:
        vm = get_vm(session, name)
        host, vm_id = HostRef.of(vm.run_on_host), vm.id
        if host is None or vm.status not in VmStatus.ACTIVE:
            raise Conflict(f"cannot suspend VM '{name}': it is not running (status {vm.status})",
                           vm=name)
        memory = memory_volume_for(session, vm)
        vm.status = VmStatus.SAVING_STATE
        audit(session, "vm", name, f"VM is saving its memory to storage domain "
                                   f"{memory['domain']} (host {host.name})")
    client = engine.agent(host.address, host.port)
    try:
        client.hibernate_vm(vm_id, memory)
    except KestrelError as err:
        _settle_after_failed_save(engine, name, host, vm_id, err)
        raise
    try:
        client.remove_vm(vm_id)
    except VmNotFound:
        pass
    return _record_suspended(engine, name, memory, host.name)


def _settle_after_failed_save(engine, name: str, host: HostRef, vm_id: str,
                              err: KestrelError) -> None:
    """The save failed: the VM is what its agent says it is (normally still running)."""
    try:
        status = engine.agent(host.address, host.port).vm_status(vm_id)["status"]
    except KestrelError:
        status = VmStatus.UNKNOWN  # never Down on a guess
    with engine.store.transaction() as session:
        vm = get_vm(session, name)
        vm.status = VmStatus.UP if status == VmStatus.SAVING_STATE else status
        if vm.status == VmStatus.DOWN:
            vm.run_on_host = None
        audit(session, "vm", name, f"suspending failed on host {host.name}: {err.message}",
              "error")


@retry_on_conflict
def _record_suspended(engine, name: str, memory: dict, host_name: str) -> dict:
    # Retried: the event follower may record the agent's Down ("saved") at the same time.
    with engine.store.transaction() as session:
        vm = get_vm(session, name)
        vm.status, vm.exit_reason, vm.run_on_host = VmStatus.SUSPENDED, "", None
        vm.memory_volume = memory
        audit(session, "vm", name, f"VM is Suspended (memory saved on host {host_name})")
        return vm_dict(vm)


@retry_on_conflict
def resume_from_snapshot(engine, name: str, memory: dict, snapshot_id: str) -> None:
    """The stopped VM's next start restores a snapshot's memory; the file stays the
    snapshot's (``snapshot`` in the VM's memory_volume: the agent keeps it, a stop or a
    removal only forgets it), so the snapshot can be reverted to again."""
    with engine.store.transaction() as session:
        vm = get_vm(session, name)
        vm.memory_volume = {**memory, "snapshot": snapshot_id}


def restore_args(memory: dict) -> tuple[dict, bool]:
    """(the memory volume as the agent takes it, whether the agent must keep the file)."""
    volume = {k: v for k, v in memory.items() if k != "snapshot"}
    return volume, "snapshot" in memory


@retry_on_conflict
def restored(engine, name: str) -> None:
    """The agent restored (and deleted) the memory volume: forget it."""
    with engine.store.transaction() as session:
        vm = get_vm(session, name)
        vm.memory_volume = None


@retry_on_conflict
def restore_failed(engine, name: str, host_name: str, message: str) -> None:
    """A failed restore keeps the memory volume: the VM is still Suspended, to try again."""
    with engine.store.transaction() as session:
        vm = get_vm(session, name)
        vm.status, vm.run_on_host, vm.launch_unconfirmed = VmStatus.SUSPENDED, None, False
        audit(session, "vm", name, f"restoring on host {host_name} failed: {message}", "error")


def discard(engine, name: str) -> bool:
    """Delete a Suspended VM's memory volume (stop or removal); True when there was one.
    A snapshot's memory (a revert's start that failed) is only forgotten: it stays the
    snapshot's."""
    with engine.store.transaction(commit=False) as session:
        vm = get_vm(session, name)
        memory = dict(vm.memory_volume) if vm.memory_volume else None
        helper = HostRef.of(session.scalars(select(Host).where(
            Host.cluster_id == vm.cluster_id, Host.status == HostStatus.UP)
            .order_by(Host.name)).first())
    if memory is None:
        return False
    if "snapshot" in memory:  # a snapshot's memory: it outlives this start
        helper = None
    elif helper is None:
        raise Conflict(f"cannot discard the saved memory of VM '{name}': no host of its "
                       "cluster is Up; nothing was changed")
    if helper is not None:
        engine.agent(helper.address, helper.port).delete_volumes([memory])
    with engine.store.transaction() as session:
        vm = get_vm(session, name)
        vm.memory_volume = None
        if vm.status == VmStatus.SUSPENDED:
            vm.status, vm.exit_reason = VmStatus.DOWN, "saved state discarded"
        audit(session, "vm", name, "VM's saved memory discarded")
    return True


def reboot(engine, name: str) -> dict:
    """Reboot the running VM ``name`` through its agent (ACPI, else reset)."""
    with engine.store.transaction(commit=False) as session:
        vm = get_vm(session, name)
        host, vm_id = HostRef.of(vm.run_on_host), vm.id
    if host is None:
        raise Conflict(f"cannot reboot VM '{name}': it is not running (status {vm.status})",
                       vm=name)
    method = engine.agent(host.address, host.port).reboot_vm(vm_id).get("method", "acpi")
    with engine.store.transaction() as session:
        vm = get_vm(session, name)
        audit(session, "vm", name, f"VM rebooted on host {host.name} ({method})")
        return vm_dict(vm)
