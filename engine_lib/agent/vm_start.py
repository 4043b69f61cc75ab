"""Bringing a VM up on this host: one sequence for the four start modes.

The agent starts a VM in one of four modes: fresh start, recovery (the agent
restarted while its VMs run), incoming migration, restore from hibernation.
They differ in a few places only (the libvirt call, the hook points, the
registry's status meanwhile), and they must not differ anywhere else: a
rollback forgotten in one copy of the sequence leaves a stray domain on the
host. So :meth:`StartSequence.run` is the sequence, written once, and each mode
is a subclass that states what differs (:class:`FreshStart` here, ``Restore``
in engine_lib.agent.hibernation, ``IncomingStart`` in engine_lib.agent.migration).

Under the VM's lock, in this order:

1. find the domain: one that runs already is reported, or refused (incoming);
2. the VM's name must be free (a different domain with that name: Conflict);
3. the mode claims what it needs besides the host (incoming: a migration slot);
4. the registry shows the mode's status until the VM runs (WaitForLaunch,
   RestoringState; incoming: nothing yet): from here on the host lists the VM,
   so an engine whose call timed out learns that this start is still going
   (hooks may take minutes) rather than take the VM for Down;
5. the mode's before hook runs over the resolved XML (fresh: the XML the
   scripts leave is the one defined);
6. the host is prepared: directories for logs and sockets, volumes, the
   cloud-init payload;
7. the domain is defined and brought up by the mode's libvirt call (create,
   restore; incoming: none here, the source's libvirt defines and starts it);
8. on any failure in 3-7: a domain this start defined is undefined (one that
   existed before stays), the registry shows what it showed before, the claim
   is released;
9. the registry takes libvirt's state, and an exit reason noted by an earlier
   run is forgotten (incoming: MigratingTo, until the VM resumes here);
10. the mode's after hook runs: the VM runs, so a failing script is a warning
    in the answer, not an error (incoming: when the VM resumes here).

Recovery (:func:`recover`) has nothing to define or start, its domains run
already: it is steps 1 and 9 for every domain with our metadata, on every
(re)connection to libvirt, and it touches no domain.

The sequence drives the Hypervisor (engine_lib.agent.vms) through the public
methods listed in :class:`VmHost` only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from contextlib import AbstractContextManager
from typing import Protocol

import libvirt

from engine_lib.agent import domxml, hooks, payload, volumes
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.domains import (
    forget_exit,
    is_ours,
    libvirt_errors,
    libvirt_status,
    remembered_exit,
    undefine,
)
from engine_lib.agent.registry import Registry
from engine_lib.agent.states import VmStatus
from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.errors import Conflict, HookError, InvalidSpec

log = logging.getLogger("kestrel.agent.vm_start")


class VmHost(Protocol):
    """What the start sequence needs of the Hypervisor: its public side, nothing more."""

    config: AgentConfig
    registry: Registry
    hook_owner_uid: int

    def vm_lock(self, vm_id: str) -> AbstractContextManager[None]: ...

    def find(self, vm_id: str) -> libvirt.virDomain | None: ...

    def connection(self) -> libvirt.virConnect: ...

    def ensure_registered(self, dom: libvirt.virDomain) -> None: ...

    def run_after_hook(self, point: str, dom: libvirt.virDomain,
                       meta: metadata.VmMetadata | None = None) -> dict: ...

    def report(self, dom: libvirt.virDomain) -> dict: ...


class StartSequence:
    """Steps 1-10 above; a subclass names its mode's hooks and status and makes its libvirt call."""

    # The registry's status while hooks run, the host is prepared and libvirt works (step 4);
    # None leaves the registry alone until the VM is up.
    status: VmStatus | None = None
    before_hook: str | None = None
    # Whether the XML the before hook's scripts leave is the one defined (step 5).
    hook_xml_used = False
    after_hook: str | None = None

    def __init__(self, hypervisor: VmHost, host: domxml.HostDomain):
        self.hv = hypervisor
        self.host = host

    def run(self) -> dict:
        """The sequence; the answer is the VM's status report with ``started``."""
        hv, host = self.hv, self.host
        with hv.vm_lock(host.uuid):
            existing = hv.find(host.uuid)
            if existing is not None and existing.isActive():
                return self.already_running(existing)
            check_name_free(hv.connection(), host.name, host.uuid)
            self.claim()
            try:
                dom = self._announce_and_bring_up(existing)
            except BaseException:
                self.release()
                raise
            return self.started(dom)

    # -- what a mode may change ------------------------------------------------------

    def already_running(self, dom: libvirt.virDomain) -> dict:
        """Step 1: a VM that runs here already is reported, not started again."""
        self.hv.ensure_registered(dom)
        return {**self.hv.report(dom), "started": False}

    def claim(self) -> None:
        """Step 3: reserve what the mode needs besides the host (nothing by default)."""

    def release(self) -> None:
        """Step 8: give back what claim() reserved."""

    def bring_up(self, xml: str, existing: libvirt.virDomain | None
                 ) -> libvirt.virDomain | None:
        """Step 7: define the domain and make the mode's libvirt call (launch)."""
        conn = self.hv.connection()
        with libvirt_errors("define", self.host.uuid):
            dom = conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        try:
            self.launch(conn, dom, xml)
        except BaseException:
            if existing is None:  # leave the host as we found it
                with contextlib.suppress(libvirt.libvirtError):
                    undefine(dom)
            raise
        return dom

    def launch(self, conn: libvirt.virConnect, dom: libvirt.virDomain, xml: str) -> None:
        """The mode's libvirt call that makes the defined domain run."""
        raise NotImplementedError

    def on_running(self, dom: libvirt.virDomain) -> None:
        """What the mode does once the VM runs, before its after hook (nothing by default)."""

    def started(self, dom: libvirt.virDomain | None) -> dict:
        """Steps 9 and 10, once the domain runs."""
        hv, host = self.hv, self.host
        # A stopped event dispatched late (between define and launch) may have
        # noted an old exit reason on the new definition: this run has none.
        forget_exit(dom)
        hv.registry.set(host.uuid, host.name, *libvirt_status(dom))
        self.on_running(dom)
        warnings = hv.run_after_hook(self.after_hook, dom, host.metadata) \
            if self.after_hook else {}
        return {**hv.report(dom), "started": True, **warnings}

    # -- the fixed steps -------------------------------------------------------------

    def _run_before_hook(self) -> str:
        """Step 5: the XML to define (the resolved one unless the hook's is used)."""
        host = self.host
        if self.before_hook is None:
            return host.xml
        xml = hooks.run(self.before_hook, host.xml, host.uuid, self.hv.config.hooks_dir,
                        host.metadata.custom_properties, owner_uid=self.hv.hook_owner_uid)
        if not self.hook_xml_used:
            return host.xml
        return _checked_hook_xml(self.before_hook, xml, host)

    def _announce_and_bring_up(self, existing: libvirt.virDomain | None
                               ) -> libvirt.virDomain | None:
        """Steps 4-8."""
        registry, host = self.hv.registry, self.host
        previous = registry.get(host.uuid)
        if self.status is not None:
            registry.set(host.uuid, host.name, self.status)
        try:
            xml = self._run_before_hook()
            prepare_host(host, self.hv.config)
            return self.bring_up(xml, existing)
        except BaseException:
            if self.status is not None:  # the registry shows what it showed before
                if previous is None:
                    registry.remove(host.uuid)
                else:
                    registry.set(previous.id, previous.name, previous.status,
                                 previous.exit_reason)
            raise


class FreshStart(StartSequence):
    """Start mode "fresh" (POST /vms): the engine's XML, defined and booted."""

    status = VmStatus.WAIT_FOR_LAUNCH
    before_hook = "before_vm_start"
    hook_xml_used = True
    after_hook = "after_vm_start"

    def launch(self, conn: libvirt.virConnect, dom: libvirt.virDomain, xml: str) -> None:
        with libvirt_errors("start", self.host.uuid):
            dom.create()


def recover(conn: libvirt.virConnect, registry: Registry) -> None:
    """Start mode "recovery": put every domain with our metadata into the registry in its
    true state.

    Runs on every (re)connection. Nothing is started, stopped or redefined.
    A VM the registry already has Down stays Down with the reason it knows
    (libvirt would only say "shutdown" where we know "user shutdown").
    """
    seen = set()
    for dom in conn.listAllDomains(0):
        try:
            if not is_ours(dom):
                continue
            vm_id = dom.UUIDString()
            status, reason = libvirt_status(dom)
            name = dom.name()
        except libvirt.libvirtError:
            continue  # undefined while we listed
        seen.add(vm_id)
        known = registry.get(vm_id)
        if known is not None and known.status == VmStatus.DOWN == status:
            continue
        if status == VmStatus.DOWN:
            reason = remembered_exit(dom) or reason
        registry.set(vm_id, name, status, reason)
        log.info("recovered VM %s (%s): %s", name, vm_id, status.value)
    for record in registry.all():
        if record.id not in seen and record.status != VmStatus.DOWN:
            registry.set(record.id, record.name, VmStatus.DOWN,
                         "gone from libvirt while the agent was disconnected")


def check_name_free(conn: libvirt.virConnect, name: str, vm_id: str) -> None:
    """Step 2: libvirt keys domains by name too; another VM's domain must not be replaced."""
    try:
        other = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if other.UUIDString() != vm_id:
        raise Conflict(f"a different domain named '{name}' ({other.UUIDString()}) "
                       "is defined on this host", name=name, vm_id=vm_id)


def prepare_host(host: domxml.HostDomain, config: AgentConfig) -> None:
    """Step 6: make what libvirt expects to exist: directories for logs and sockets, volumes,
    the cloud-init payload ISO."""
    for kind in ("console", "channels", "nvram", "payload"):
        for path in host.paths.get(kind, []):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    volumes.prepare(host.metadata.volumes, config.storage_domains)
    if host.payload is not None:
        payload.build(host.payload, config.resolve(placeholders.payload(host.uuid)))


def _checked_hook_xml(point: str, xml: str, host: domxml.HostDomain) -> str:
    """The XML a before hook left, if it is still this VM's domain."""
    if xml == host.xml:
        return xml
    try:
        root = domxml.parse_domain(xml)
        changed_id = domxml.domain_uuid(root)
    except InvalidSpec as exc:
        raise HookError(f"{point} hooks left XML that is not a domain: "
                        f"{exc.reason}", hook_point=point) from None
    if changed_id != host.uuid:
        raise HookError(f"{point} hooks changed the domain UUID from {host.uuid} "
                        f"to {changed_id}; it is the VM id and must stay",
                        hook_point=point)
    return xml
