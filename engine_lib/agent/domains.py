"""What a libvirt domain tells the agent about its VM, and the few things done to every domain.

Every operation module (vms, vm_start, hibernation, migration) asks the same
questions of a domain: is it ours (it carries the engine's metadata), is it
running, which VM status and exit reason does libvirt's state mean, why did
it stop last time. They live here once, so that no module borrows another's
private helpers.

The exit reason is noted in the stopped domain's own metadata (under our agent
namespace, not the engine's): an agent restarted meanwhile still knows that a
VM was "user shutdown", where libvirt would only say "shutdown".
"""

from __future__ import annotations

import contextlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from xml.sax.saxutils import quoteattr

import libvirt

from engine_lib.agent import states
from engine_lib.agent.states import VmStatus
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import LibvirtError, VmNotFound

log = logging.getLogger("kestrel.agent.domains")

# Undefining must not fail on what a persistent domain may have collected (NVRAM,
# a managed save, snapshot or checkpoint metadata); the NVRAM file itself stays.
UNDEFINE_FLAGS = (libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
                  | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                  | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                  | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)

EXIT_NAMESPACE = "https://kestrel.virt/xmlns/agent-exit/1"
_EXIT_KEY = "kestrel-exit"

# libvirt prints every error to stderr by default; ours become typed errors instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@contextlib.contextmanager
def libvirt_errors(action: str, vm_id: str | None = None) -> Iterator[None]:
    """Turn a libvirt failure into a typed error naming the operation and the VM.

    A missing domain is VmNotFound, so the HTTP layer answers 404 without
    knowing libvirt's error codes.
    """
    try:
        yield
    except libvirt.libvirtError as exc:
        if vm_id and exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise VmNotFound(vm_id) from None
        target = f" VM {vm_id}" if vm_id else ""
        raise LibvirtError(f"libvirt could not {action}{target}: {exc.get_error_message()}",
                           libvirt_code=exc.get_error_code(), vm_id=vm_id) from None


def undefine(dom: libvirt.virDomain) -> None:
    """Forget a persistent domain's definition (the caller decides which errors matter)."""
    dom.undefineFlags(UNDEFINE_FLAGS)


def is_ours(dom: libvirt.virDomain) -> bool:
    """Whether the domain carries our metadata (the engine created it)."""
    try:
        dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.NAMESPACE, 0)
        return True
    except libvirt.libvirtError:
        return False


def is_active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False  # a transient domain that stopped is gone


def is_running(dom: libvirt.virDomain) -> bool:
    """Running or blocked: the guest executes (a paused or incoming domain does not)."""
    try:
        return dom.state()[0] in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED)
    except libvirt.libvirtError:
        return False


def libvirt_status(dom: libvirt.virDomain) -> tuple[VmStatus, str | None]:
    """The VM's status as libvirt's state says it (recovery, after an operation)."""
    state, reason = dom.state()
    return states.status_and_exit_reason(state, reason)


def remember_exit(dom: libvirt.virDomain, reason: str) -> None:
    """Note the exit reason in a stopped persistent domain (a fresh start redefines
    the domain from the engine's XML, which drops the note)."""
    try:
        if dom.isActive() or not dom.isPersistent():
            return
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, f"<exit reason={quoteattr(reason)}/>",
                        _EXIT_KEY, EXIT_NAMESPACE, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    except libvirt.libvirtError as exc:
        log.warning("could not note the exit reason of VM %s: %s", dom.UUIDString(),
                    exc.get_error_message())


def forget_exit(dom: libvirt.virDomain) -> None:
    """Drop the note: a VM that runs again has no exit reason."""
    with contextlib.suppress(libvirt.libvirtError):
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, EXIT_NAMESPACE,
                        libvirt.VIR_DOMAIN_AFFECT_CONFIG)


def remembered_exit(dom: libvirt.virDomain) -> str | None:
    try:
        note = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, EXIT_NAMESPACE,
                            libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        return ET.fromstring(note).get("reason") or None
    except (libvirt.libvirtError, ET.ParseError):
        return None
