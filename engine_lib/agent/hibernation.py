"""Hibernation on a host: save a running VM's memory to a storage domain, restore it.

Hibernate (``POST /vms/{id}/hibernate``): the before_vm_hibernate hooks run
over the live XML (a failing hook keeps the VM running), the VM is
SavingState while libvirt writes the guest's memory and device state to the
memory volume (``<domain>/<image>/<volume>`` on a storage domain, like a disk
volume), then QEMU is gone: the VM is Down with exit reason "saved" and, like
a stopped VM, stays in the registry until the engine removes it.

Restore (``POST /vms`` with mode "restore"), a start mode of the one start
sequence (engine_lib.agent.vm_start): the engine's XML is resolved for *this*
host (the VM may come back on another one: the storage domain is shared),
defined, and libvirt restores the saved state into it with that XML
(RestoringState, then Up: the guest continues where it was, it does not
boot). The after_vm_dehibernate hooks run over the live XML. The memory
volume is deleted after a successful restore: the state in it is stale the
moment the guest runs on, and restoring it a second time would fork the
guest's disks. A failed restore keeps it, to try again. A memory snapshot's
file is restored the same way with ``keep_memory`` (a revert starts the guest
on a new empty top over the snapshot's frozen volume, so it may be reverted to
again): it is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os

import libvirt

from engine_lib.agent import domxml
from engine_lib.agent.domains import is_active, libvirt_errors, libvirt_status
from engine_lib.agent.states import VmStatus
from engine_lib.agent.vm_start import StartSequence
from engine_lib.agent.volumes import VolumeLocation
from engine_lib.protocol.errors import Conflict, KestrelError, LibvirtError, NotFound

log = logging.getLogger("kestrel.agent.hibernation")


def hibernate(hv, vm_id: str, location: VolumeLocation) -> dict:
    """Save the running VM ``vm_id`` to ``location``; it is Down ("saved") afterwards.

    ``hv`` is the Hypervisor (engine_lib.agent.vms), used through its public methods.
    """
    domains = hv.config.storage_domains
    with hv.vm_lock(vm_id):
        dom = hv.lookup(vm_id)
        if not is_active(dom):
            raise Conflict(f"cannot hibernate VM {vm_id}: it is not running", vm_id=vm_id)
        # A link there (or on the way) is refused: libvirt would write through it.
        path = location.checked_path(domains)
        if location.exists(domains):
            raise Conflict(f"memory volume {path} already exists; it may hold another saved "
                           "state, so it is not overwritten", vm_id=vm_id, path=path)
        hv.run_domain_hook("before_vm_hibernate", dom)
        name = dom.name()
        previous = hv.registry.get(vm_id)
        hv.registry.set(vm_id, name, VmStatus.SAVING_STATE)
        try:
            location.make_parent(domains)
            dom.saveFlags(path, None, 0)
        except (libvirt.libvirtError, OSError) as exc:
            with contextlib.suppress(OSError):
                location.unlink(domains)  # a partial state must never be restored
            if is_active(dom):
                hv.registry.set(vm_id, name, *libvirt_status(dom))
            elif previous is not None:
                hv.registry.set(vm_id, name, previous.status, previous.exit_reason)
            message = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) \
                else str(exc)
            raise LibvirtError(f"libvirt could not hibernate VM {vm_id}: {message}",
                               vm_id=vm_id) from None
        hv.record_down(dom, "saved")
        size = os.stat(path, follow_symlinks=False).st_size
        log.info("VM %s (%s) hibernated to %s (%d MiB)", name, vm_id, path, size >> 20)
        return {**hv.report(dom), "memory_volume": _location_dict(location),
                "size_bytes": size}


def restore(hv, xml: str, location: VolumeLocation, keep_memory: bool = False) -> dict:
    """Define the engine's VM on this host and restore its saved state into it;
    ``keep_memory``: a snapshot's memory, which stays for the next revert to it."""
    host = domxml.resolve(xml, hv.config.paths, hv.config.storage_domains)
    try:
        location.checked_path(hv.config.storage_domains, must_exist=True)
    except FileNotFoundError:
        raise NotFound("memory volume", location.path(hv.config.storage_domains)) from None
    return Restore(hv, host, location, keep_memory).run()


class Restore(StartSequence):
    """Start mode "restore": the saved guest continues in the engine's freshly defined domain."""

    status = VmStatus.RESTORING_STATE
    after_hook = "after_vm_dehibernate"

    def __init__(self, hypervisor, host: domxml.HostDomain, location: VolumeLocation,
                 keep_memory: bool = False):
        super().__init__(hypervisor, host)
        self.location = location
        self.keep_memory = keep_memory
        self.memory_path = location.path(hypervisor.config.storage_domains)

    def launch(self, conn: libvirt.virConnect, dom: libvirt.virDomain, xml: str) -> None:
        with libvirt_errors("restore", self.host.uuid):
            conn.restoreFlags(self.memory_path, xml, libvirt.VIR_DOMAIN_SAVE_RUNNING)

    def on_running(self, dom: libvirt.virDomain) -> None:
        """The saved state is stale once the guest runs on: restoring it again would fork
        the guest's disks, so it goes (a failed restore keeps it, to try again). A
        snapshot's memory stays: each revert to it starts on a new empty top, so no
        guest write ever lands under it."""
        if self.keep_memory:
            log.info("VM %s (%s) restored from %s (kept)", self.host.name, self.host.uuid,
                     self.memory_path)
            return
        try:
            self.location.unlink(self.hv.config.storage_domains)
        except (OSError, KestrelError) as exc:
            log.warning("VM %s restored, but its memory volume %s stays: %s", self.host.uuid,
                        self.memory_path, exc)
        log.info("VM %s (%s) restored from %s", self.host.name, self.host.uuid,
                 self.memory_path)


def _location_dict(location: VolumeLocation) -> dict:
    return {"domain": location.domain, "image": location.image, "volume": location.volume}
