"""Hibernation on a host: save a running VM's memory to a storage domain, restore it.

Hibernate (``POST /vms/{id}/hibernate``): the before_vm_hibernate hooks run
over the live XML (a failing hook keeps the VM running), the VM is
SavingState while libvirt writes the guest's memory and device state to the
memory volume (``<domain>/<image>/<volume>`` on a storage domain, like a disk
volume), then QEMU is gone: the VM is Down with exit reason "saved" and, like
a stopped VM, stays in the registry until the engine removes it.

Restore (``POST /vms`` with mode "restore"): the engine's XML is resolved for
*this* host (the VM may come back on another one: the storage domain is
shared), defined, and libvirt restores the saved state into it with that XML
(RestoringState, then Up: the guest continues where it was, it does not
boot). The after_vm_dehibernate hooks run over the live XML. The memory
volume is deleted after a successful restore: the state in it is stale the
moment the guest runs on, and restoring it a second time would fork the
guest's disks. A failed restore keeps it, to try again.
"""

from __future__ import annotations

import contextlib
import logging
import os

import libvirt

from engine_lib.agent import domxml
from engine_lib.agent.states import VmStatus
from engine_lib.agent.volumes import VolumeLocation
from engine_lib.protocol.errors import Conflict, LibvirtError, NotFound

log = logging.getLogger("kestrel.agent.hibernation")


def hibernate(hv, vm_id: str, location: VolumeLocation) -> dict:
    """Save the running VM ``vm_id`` to ``location``; it is Down ("saved") afterwards."""
    from engine_lib.agent import vms  # the Hypervisor's module (imports us lazily too)

    path = location.path(hv.config.storage_domains)
    with hv._vm_lock(vm_id):
        dom = hv._lookup(vm_id)
        if not vms._is_active(dom):
            raise Conflict(f"cannot hibernate VM {vm_id}: it is not running", vm_id=vm_id)
        if os.path.exists(path):
            raise Conflict(f"memory volume {path} already exists; it may hold another saved "
                           "state, so it is not overwritten", vm_id=vm_id, path=path)
        hv._hook_xml("before_vm_hibernate", dom)
        name = dom.name()
        previous = hv.registry.get(vm_id)
        hv.registry.set(vm_id, name, VmStatus.SAVING_STATE)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            dom.saveFlags(path, None, 0)
        except (libvirt.libvirtError, OSError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(path)  # a partial state must never be restored
            if vms._is_active(dom):
                hv.registry.set(vm_id, name, *vms._libvirt_status(dom))
            elif previous is not None:
                hv.registry.set(vm_id, name, previous.status, previous.exit_reason)
            message = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) \
                else str(exc)
            raise LibvirtError(f"libvirt could not hibernate VM {vm_id}: {message}",
                               vm_id=vm_id) from None
        hv._record_down(dom, "saved")
        size = os.path.getsize(path)
        log.info("VM %s (%s) hibernated to %s (%d MiB)", name, vm_id, path, size >> 20)
        return {**hv._status(dom), "memory_volume": _location_dict(location),
                "size_bytes": size}


def restore(hv, xml: str, location: VolumeLocation) -> dict:
    """Define the engine's VM on this host and restore its saved state into it."""
    from engine_lib.agent import vms

    host = domxml.resolve(xml, hv.config.paths, hv.config.storage_domains)
    path = location.path(hv.config.storage_domains)
    if not os.path.isfile(path):
        raise NotFound("memory volume", path)
    with hv._vm_lock(host.uuid):
        existing = hv._find(host.uuid)
        if existing is not None and existing.isActive():
            hv._ensure_registered(existing)
            return {**hv._status(existing), "started": False}
        hv._check_name_free(host.name, host.uuid)
        previous = hv.registry.get(host.uuid)
        hv.registry.set(host.uuid, host.name, VmStatus.RESTORING_STATE)
        dom = None
        try:
            hv._prepare(host)
            conn = hv.connection()
            with vms._libvirt_errors("define", host.uuid):
                dom = conn.defineXMLFlags(host.xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
            with vms._libvirt_errors("restore", host.uuid):
                conn.restoreFlags(path, host.xml, libvirt.VIR_DOMAIN_SAVE_RUNNING)
        except Exception:
            if dom is not None and existing is None:  # leave the host as we found it
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefineFlags(vms._UNDEFINE_FLAGS)
            if previous is None:
                hv.registry.remove(host.uuid)
            else:
                hv.registry.set(previous.id, previous.name, previous.status,
                                previous.exit_reason)
            raise
        vms._forget_exit(dom)
        hv.registry.set(host.uuid, host.name, *vms._libvirt_status(dom))
        try:
            os.unlink(path)
        except OSError as exc:
            log.warning("VM %s restored, but its memory volume %s stays: %s", host.uuid,
                        path, exc)
        log.info("VM %s (%s) restored from %s", host.name, host.uuid, path)
        warnings = hv._after_hooks("after_vm_dehibernate", dom, host.metadata)
        return {**hv._status(dom), "started": True, **warnings}


def _location_dict(location: VolumeLocation) -> dict:
    return {"domain": location.domain, "image": location.image, "volume": location.volume}
