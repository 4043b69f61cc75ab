"""The agent's libvirt side: start, stop, pause, remove and report this host's VMs.

Every libvirt failure leaves here as a typed error (VmNotFound, LibvirtError,
...) naming the VM and the operation, so the HTTP layer only serializes.

Statuses come from the registry (engine_lib.agent.registry): libvirt
lifecycle events update it as they happen, the operations here as they go,
and every (re)connection to libvirt rebuilds it from the domains that carry
our metadata: that is the recovery start mode, an agent restarted while its
VMs run finds them all, in their true state, without touching them.

The Hypervisor holds what every operation shares (the libvirt connection, the
per-VM locks, the registry, hooks over a domain's XML) and offers it through
public methods; the longer operations live in their own modules and use only
those: the start sequence of every start mode (vm_start), hibernation and
restore (hibernation), migration in both directions (migration), host facts
(host_info), guest-agent queries (guests), balloon policy (ballooning), push
backups with checkpoints (backups).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt

from engine_lib.agent import (
    backups,
    ballooning,
    domxml,
    event_stream,
    guests,
    hibernation,
    hooks,
    host_cpu,
    host_info,
    hotplug,
    libvirt_events,
    migration,
    payload,
    registry,
    snapshot_request,
    snapshots,
    states,
    stats,
    vm_start,
    volumes,
)
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.devices_hash import DevicesHashes
from engine_lib.agent.domains import (
    is_active,
    is_ours,
    is_running,
    libvirt_errors,
    libvirt_status,
    remember_exit,
    undefine,
)
from engine_lib.agent.states import VmStatus
from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.devices import device_alias, find_by_alias
from engine_lib.protocol.errors import (
    Conflict,
    HookError,
    InvalidSpec,
    KestrelError,
    LibvirtError,
    NotFound,
    VmNotFound,
)

log = logging.getLogger("kestrel.agent.vms")

MiB = 1024 * 1024
# What GET /stats adds to a running VM's GET /vms entry (engine_lib.agent.stats).
_COUNTERS = ("cpu", "memory", "disks", "nics", "rates")
START_MODES = ("fresh", "incoming")
_POLL = 0.2
# A guest that is still booting (or busy) may miss a power button press, as
# real ones do; press again at this interval until the timeout.
ACPI_REPEAT = 5.0


class Hypervisor:
    """This host's VMs, through one shared libvirt connection (thread-safe in libvirt)."""

    def __init__(self, config: AgentConfig):
        self.config = config
        self._conn: libvirt.virConnect | None = None
        self._conn_lock = threading.Lock()
        self._vm_locks: dict[str, threading.Lock] = {}
        self._vm_locks_lock = threading.Lock()
        # Every status change, numbered, for GET /events (the engine's event follower).
        self.event_log = event_stream.EventLog()
        self.registry = registry.Registry(listener=self._log_change)
        # Hook scripts must be owned by root; a seam for tests that do not run as root.
        self.hook_owner_uid = 0
        self._event_callback: int | None = None
        self._sampler = stats.Sampler()
        self._host_cpu = host_cpu.source(config, self._node_cpu_times)
        self._devices_hashes = DevicesHashes()
        self.migrations = migration.Migrations(self)
        # Shrinks/grows balloons of VMs whose cluster allows it; started by Api.start.
        self.ballooning = ballooning.BalloonPolicy(self, config.ballooning)

    # -- connection and lookup -------------------------------------------------

    def connection(self) -> libvirt.virConnect:
        """The libvirt connection, reopened if libvirtd restarted since."""
        with self._conn_lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self._conn = None
            uri = self.config.libvirt_uri
            libvirt_events.ensure_loop()  # before open: only then does the connection get events
            conn = None
            try:
                conn = libvirt.open(uri)
                self._event_callback = libvirt_events.watch_lifecycle(conn, self._on_lifecycle)
                self._devices_hashes.watch(conn)
                vm_start.recover(conn, self.registry)
                self.migrations.recover(conn)
            except libvirt.libvirtError as exc:
                if conn is not None:
                    with contextlib.suppress(libvirt.libvirtError):
                        conn.close()
                raise LibvirtError(f"cannot connect to libvirt at {uri}: "
                                   f"{exc.get_error_message()}", uri=uri) from None
            self._conn = conn
            return self._conn

    def close(self) -> None:
        self.ballooning.stop()
        with self._conn_lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    if self._event_callback is not None:
                        self._conn.domainEventDeregisterAny(self._event_callback)
                    self._conn.close()
                self._conn = None
                self._event_callback = None

    # -- registry: recovery and events ---------------------------------------------

    def _log_change(self, record: registry.VmRecord) -> None:
        self.event_log.append(record.id, record.name, record.status.value, record.exit_reason)

    def events_after(self, seq: int, timeout: float) -> dict:
        """Status changes after ``seq`` (long poll: waits up to ``timeout`` s for one)."""
        with contextlib.suppress(KestrelError):
            self.connection()  # a (re)connection recovers the registry, which logs
        return self.event_log.after(seq, timeout)

    def _on_lifecycle(self, dom: libvirt.virDomain, event: int, detail: int) -> None:
        """A libvirt lifecycle event (event thread): update the registry at once."""
        # A start or incoming migration brings a new domain, and with it new devices.
        self._devices_hashes.invalidate(dom.UUIDString())
        if self.migrations.on_event(dom, event, detail):
            return  # an incoming migration's VM: MigratingTo until it resumes here
        vm_id = dom.UUIDString()
        if vm_id not in self.registry:
            # Not started through this agent (an incoming migration, virsh): ours if
            # it carries our metadata.
            if event in (registry.UNDEFINED, registry.STOPPED) or not is_ours(dom):
                return
            status, reason = libvirt_status(dom)
            self.registry.set(vm_id, dom.name(), status, reason)
            return
        if event in (registry.STOPPED, registry.CRASHED) and is_active(dom):
            return  # stale: the VM was started again before this event was dispatched
        if event in (registry.STARTED, registry.RESUMED) and not is_running(dom):
            return  # stale: it went down or was paused again before this was dispatched
        if event == registry.SUSPENDED and is_running(dom):
            return  # stale: it was resumed again before this was dispatched
        record = self.registry.on_event(vm_id, event, detail)
        if record is not None and record.status == VmStatus.DOWN and record.exit_reason:
            # Only while no operation holds the VM: a start in flight redefines the
            # domain, and a note written now would land on the new definition. The
            # event thread never waits for that lock (it must not block libvirt).
            with self._vm_lock_if_free(vm_id) as held:
                if held:
                    remember_exit(dom, record.exit_reason)
        if record is not None:
            log.info("VM %s (%s): %s/%s -> %s%s", record.name, vm_id,
                     registry.EVENT_NAMES[event] if event < len(registry.EVENT_NAMES) else event,
                     detail, record.status.value,
                     f" ({record.exit_reason})" if record.exit_reason else "")

    @contextlib.contextmanager
    def vm_lock(self, vm_id: str) -> Iterator[None]:
        """Serialize state changes of one VM (two starts must not race)."""
        with self._vm_locks_lock:
            lock = self._vm_locks.setdefault(vm_id, threading.Lock())
        with lock:
            yield

    @contextlib.contextmanager
    def _vm_lock_if_free(self, vm_id: str) -> Iterator[bool]:
        with self._vm_locks_lock:
            lock = self._vm_locks.setdefault(vm_id, threading.Lock())
        held = lock.acquire(blocking=False)
        try:
            yield held
        finally:
            if held:
                lock.release()

    def lookup(self, vm_id: str) -> libvirt.virDomain:
        """The VM's domain; VmNotFound when libvirt has none with this UUID."""
        with libvirt_errors("look up", vm_id):
            return self.connection().lookupByUUIDString(vm_id)

    def find(self, vm_id: str) -> libvirt.virDomain | None:
        """The VM's domain, or None where lookup() would raise VmNotFound."""
        try:
            return self.lookup(vm_id)
        except VmNotFound:
            return None

    # -- lifecycle ---------------------------------------------------------------

    def start(self, xml: str, mode: str = "fresh") -> dict:
        """Resolve, prepare the host, define and start; a running VM is reported, not restarted."""
        if mode not in START_MODES:
            raise InvalidSpec("mode", f"'{mode}' is not supported; this agent starts VMs in "
                                      f"mode {', '.join(repr(m) for m in START_MODES)}")
        if mode == "incoming":
            return self.migrations.prepare_incoming(xml)
        host = domxml.resolve(xml, self.config.paths, self.config.storage_domains)
        return vm_start.FreshStart(self, host).run()

    def run_domain_hook(self, point: str, dom: libvirt.virDomain,
                        meta: metadata.VmMetadata | None = None) -> None:
        """Run a hook point over a domain's live XML (the result is not used)."""
        vm_id = dom.UUIDString()
        if not hooks.scripts_of(point, self.config.hooks_dir, owner_uid=self.hook_owner_uid):
            return
        with libvirt_errors("read the XML of", vm_id):
            xml = dom.XMLDesc(0)
        if meta is None:
            meta = metadata.read(domxml.parse_domain(xml))
        hooks.run(point, xml, vm_id, self.config.hooks_dir, meta.custom_properties,
                  owner_uid=self.hook_owner_uid)

    def run_after_hook(self, point: str, dom: libvirt.virDomain,
                       meta: metadata.VmMetadata | None = None) -> dict:
        """after_* hooks run once the operation is done: a failure cannot undo it, so
        it is logged and reported as ``hook_warnings`` rather than raised (as VDSM does)."""
        try:
            self.run_domain_hook(point, dom, meta)
        except (HookError, LibvirtError) as exc:
            log.warning("VM %s: %s", dom.UUIDString(), exc.message)
            return {"hook_warnings": [exc.message]}
        return {}

    def remove_payload(self, vm_id: str) -> None:
        """Delete the VM's cloud-init ISO (a host without a payload root never wrote one)."""
        if "payload" in self.config.paths:
            payload.remove(self.config.resolve(placeholders.payload(vm_id)))

    def shutdown(self, vm_id: str, timeout: float) -> dict:
        """Press the ACPI power button (again every ACPI_REPEAT s); destroy after ``timeout`` s.

        Not under the VM lock: a destroy must be able to cut a long shutdown short.
        """
        dom = self.lookup(vm_id)
        forced = False
        warnings: dict = {}
        if dom.isActive():
            self.run_domain_hook("before_vm_destroy", dom)
            self.ensure_registered(dom)
            self.registry.request_shutdown(vm_id, True)
            try:
                deadline = time.monotonic() + timeout
                press_at = 0.0
                while dom.isActive() and time.monotonic() < deadline:
                    if time.monotonic() >= press_at:
                        self._press_power_button(dom, vm_id)
                        press_at = time.monotonic() + ACPI_REPEAT
                    time.sleep(_POLL)
                if dom.isActive():
                    forced = self._destroy(dom, vm_id)
                if not dom.isActive():
                    self.record_down(dom, "destroyed" if forced else registry.ADMIN_SHUTDOWN)
            finally:
                self.registry.request_shutdown(vm_id, False)
            warnings = self.run_after_hook("after_vm_destroy", dom)
        return {**self.report(dom), "forced": forced, **warnings}

    def ensure_registered(self, dom: libvirt.virDomain) -> None:
        """Put a domain the registry does not know (started by virsh, say) in its true state."""
        if dom.UUIDString() not in self.registry:
            self.registry.set(dom.UUIDString(), dom.name(), *libvirt_status(dom))

    def record_down(self, dom: libvirt.virDomain, reason: str) -> None:
        """Down with the reason the agent knows, unless an event already said why."""
        record = self.registry.get(dom.UUIDString())
        if record is None or record.status != VmStatus.DOWN:
            self.registry.set(dom.UUIDString(), dom.name(), VmStatus.DOWN, reason)
            remember_exit(dom, reason)

    @staticmethod
    def _press_power_button(dom: libvirt.virDomain, vm_id: str) -> None:
        try:
            dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        except libvirt.libvirtError as exc:
            if dom.isActive():  # not merely "went down meanwhile"
                raise LibvirtError(f"libvirt could not shut down VM {vm_id}: "
                                   f"{exc.get_error_message()}", vm_id=vm_id) from None

    def destroy(self, vm_id: str) -> dict:
        """Power off at once (idempotent: a VM that is down stays down)."""
        with self.vm_lock(vm_id):
            dom = self.lookup(vm_id)
            if not dom.isActive():
                return self.report(dom)
            self.run_domain_hook("before_vm_destroy", dom)
            self.ensure_registered(dom)
            if self._destroy(dom, vm_id):
                self.record_down(dom, "destroyed")
            return {**self.report(dom), **self.run_after_hook("after_vm_destroy", dom)}

    def pause(self, vm_id: str) -> dict:
        """Pause the guest's CPUs (Paused); pausing a paused VM changes nothing."""
        return self._pause_or_resume(vm_id, pause=True)

    def resume(self, vm_id: str) -> dict:
        """Let a paused guest run again (Up); resuming a running VM changes nothing."""
        return self._pause_or_resume(vm_id, pause=False)

    def _pause_or_resume(self, vm_id: str, pause: bool) -> dict:
        action = "pause" if pause else "resume"
        with self.vm_lock(vm_id):
            dom = self.lookup(vm_id)
            with libvirt_errors("read the state of", vm_id):
                state, _ = dom.state()
            if state not in (states.RUNNING, states.BLOCKED, states.PAUSED):
                raise Conflict(f"cannot {action} VM {vm_id}: it is "
                               f"{states.state_name(state)}, not running", vm_id=vm_id,
                               state=states.state_name(state))
            if (state == states.PAUSED) != pause:
                with libvirt_errors(action, vm_id):
                    if pause:
                        dom.suspend()
                    else:
                        dom.resume()
            self.registry.set(vm_id, dom.name(), *libvirt_status(dom))
            return self.report(dom)

    def _destroy(self, dom: libvirt.virDomain, vm_id: str) -> bool:
        try:
            dom.destroy()
            return True
        except libvirt.libvirtError as exc:
            if not dom.isActive():  # it went down meanwhile: that is what we wanted
                return False
            raise LibvirtError(f"libvirt could not destroy VM {vm_id}: "
                               f"{exc.get_error_message()}", vm_id=vm_id) from None

    def remove(self, vm_id: str) -> dict:
        """Forget a stopped VM on this host; its volumes stay (see delete_volumes)."""
        with self.vm_lock(vm_id):
            dom = self.find(vm_id)
            if dom is None:
                if vm_id not in self.registry:
                    raise VmNotFound(vm_id)
                self.registry.remove(vm_id)  # Down, and libvirt forgot it already
                self.remove_payload(vm_id)
                return {"id": vm_id, "removed": True}
            if dom.isActive():
                raise Conflict(f"VM {vm_id} is running on this host; destroy or shut it "
                               "down before removing it", vm_id=vm_id)
            with libvirt_errors("undefine", vm_id):
                if dom.isPersistent():
                    undefine(dom)
            self.registry.remove(vm_id)
            self.remove_payload(vm_id)
            return {"id": vm_id, "removed": True}

    # -- reporting ---------------------------------------------------------------

    def status(self, vm_id: str) -> dict:
        """The registry's status, with libvirt's details while libvirt has the domain.

        A domain without our metadata is still reported (from libvirt alone);
        a VM that went Down and that libvirt forgot is reported from the registry.
        """
        self.connection()  # the registry is rebuilt on (re)connection
        dom = self.find(vm_id)
        if dom is None:
            record = self.registry.get(vm_id)
            if record is None:
                raise VmNotFound(vm_id)
            return record.report()
        return self.report(dom)

    def report(self, dom: libvirt.virDomain) -> dict:
        """The status document of a domain libvirt has (GET /vms/{id}): the registry's status,
        libvirt's details."""
        vm_id = dom.UUIDString()
        with libvirt_errors("read the state of", vm_id):
            state, reason = dom.state()
            _, _, memory_kib, vcpus, cpu_time = dom.info()
            persistent = bool(dom.isPersistent())
            domain_id = dom.ID()
        record = self.registry.get(vm_id)
        if record is not None:
            status, exit_reason = record.status, record.exit_reason
        else:
            status, exit_reason = states.status_and_exit_reason(state, reason)
        report = {"id": vm_id, "name": dom.name(), "status": status.value,
                  "state": states.state_name(state), "reason": reason,
                  "persistent": persistent, "vcpus": vcpus,
                  "memory_mib": memory_kib // 1024, "cpu_time_ns": cpu_time,
                  "domain_id": domain_id if domain_id >= 0 else None,
                  "devices_hash": self._devices_hashes.get(dom) if domain_id >= 0 else None}
        if status == VmStatus.DOWN and exit_reason:
            report["exit_reason"] = exit_reason
        return report

    def list_vms(self) -> list[dict]:
        """Every VM in the registry (ours: started here or carrying our metadata)."""
        self.connection()
        report = []
        for record in self.registry.all():
            try:
                report.append(self.status(record.id))
            except VmNotFound:
                continue  # removed while we listed
        return sorted(report, key=lambda vm: vm["name"])

    def xml(self, vm_id: str) -> dict:
        dom = self.lookup(vm_id)
        with libvirt_errors("read the XML of", vm_id):
            return {"id": vm_id, "xml": dom.XMLDesc(0)}

    def console_log(self, vm_id: str, nbytes: int) -> dict:
        """The last ``nbytes`` of the serial console log (kept after the VM is removed)."""
        path = None
        dom = self.find(vm_id)
        if dom is not None:
            with libvirt_errors("read the XML of", vm_id):
                path = domxml.console_log_path(dom.XMLDesc(0))
        if path is None:
            path = self.config.resolve(placeholders.console_log(vm_id))
        try:
            with open(path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                offset = max(0, size - nbytes)
                handle.seek(offset)
                data = handle.read(nbytes)
        except FileNotFoundError:
            raise NotFound("console log", vm_id) from None
        return {"id": vm_id, "path": path, "size": size, "offset": offset,
                "data": data.decode("utf-8", errors="replace")}

    def host_info(self) -> dict:
        """This host's facts for the engine (engine_lib.agent.host_info)."""
        return host_info.describe(self.connection(), self.config, self.hook_owner_uid)

    # -- hibernation and reboot ------------------------------------------------------

    def hibernate(self, vm_id: str, location: volumes.VolumeLocation) -> dict:
        """Save the VM's memory to a storage domain (engine_lib.agent.hibernation)."""
        return hibernation.hibernate(self, vm_id, location)

    def restore(self, xml: str, location: volumes.VolumeLocation,
                keep_memory: bool = False) -> dict:
        """Start mode "restore": the saved VM runs on where it was hibernated (or where a
        memory snapshot was taken: ``keep_memory`` keeps that file for the next revert)."""
        return hibernation.restore(self, xml, location, keep_memory=keep_memory)

    # -- snapshots -----------------------------------------------------------------

    def create_snapshot(self, vm_id: str, request: snapshot_request.SnapshotRequest) -> dict:
        """A live external snapshot onto overlays made here (engine_lib.agent.snapshots)."""
        return snapshots.create(self, vm_id, request)

    def chains(self, vm_id: str) -> dict:
        """Each disk's live chain, top first, and its block job."""
        return snapshots.chains(self, vm_id)

    def create_overlay(self, overlay: snapshot_request.Overlay) -> dict:
        """A stopped VM's new top: a qcow2 overlay on its current top."""
        path = volumes.create_overlay(overlay.volume, overlay.parent, overlay.parent_format,
                                      overlay.size_mib, self.config.storage_domains)
        return {"volume": overlay.volume.volume, "path": path, "created": True}

    def backup(self, jobs, vm_id: str, request) -> dict:
        """Push backup of a running VM, as a job (engine_lib.agent.backups)."""
        return backups.start(self, jobs, vm_id, request)

    def checkpoints(self, vm_id: str) -> dict:
        return backups.checkpoints(self, vm_id)

    def delete_checkpoint(self, vm_id: str, name: str) -> dict:
        return backups.delete_checkpoint(self, vm_id, name)

    def reboot(self, vm_id: str) -> dict:
        """ACPI reboot (libvirt turns the guest's power-off into a reset, so the QEMU
        process stays); a hard reset where libvirt cannot send ACPI to the domain.

        A guest that ignores the ACPI request is not reset behind its back, as
        with a real machine's power button."""
        with self.vm_lock(vm_id):
            dom = self.lookup(vm_id)
            if not is_active(dom):
                raise Conflict(f"cannot reboot VM {vm_id}: it is not running", vm_id=vm_id)
            try:
                dom.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
                method = "acpi"
            except libvirt.libvirtError as exc:
                log.info("VM %s: ACPI reboot refused (%s); resetting", vm_id,
                         exc.get_error_message())
                with libvirt_errors("reset", vm_id):
                    dom.reset(0)
                method = "reset"
            return {**self.report(dom), "method": method}

    # -- guest agent ---------------------------------------------------------------

    def guest_info(self, vm_id: str) -> dict:
        """What qemu-guest-agent reports (engine_lib.agent.guests); GuestAgentUnavailable
        when the VM does not run or its agent does not answer in time."""
        return guests.ask(self.lookup(vm_id))

    def guests_info(self) -> dict:
        """guest_info() of every Up VM: {"guests": {id: report}, "unavailable": {id: why}}."""
        vm_ids = [vm["id"] for vm in self.list_vms() if vm["status"] == VmStatus.UP]
        return guests.ask_all(vm_ids, self.guest_info)

    # -- hotplug -------------------------------------------------------------------

    def plug_device(self, vm_id: str, xml: str, volume: metadata.VolumeRef | None = None,
                    luns: dict[str, str] | None = None,
                    chain: list[metadata.VolumeRef] | None = None) -> dict:
        """Attach a disk or NIC to a running VM (and to its definition, if persistent).

        The device's volume is created first when given and missing (an overlay on
        its ``chain``, the volumes under it, which must exist); the
        before_device_create hooks see the resolved device XML and the XML
        they leave is attached. Returns the live device (with its address).
        """
        device = hotplug.parse_device(xml)
        alias = device_alias(device)
        device_xml, _ = hotplug.resolve(device, self.config.paths, self.config.storage_domains,
                                        luns, volume, chain)
        with self.vm_lock(vm_id):
            dom = self.lookup(vm_id)
            if not is_active(dom):
                raise Conflict(f"cannot hotplug into VM {vm_id}: it is not running",
                               vm_id=vm_id)
            with libvirt_errors("read the XML of", vm_id):
                live = dom.XMLDesc(0)
            if find_by_alias(live, alias) is not None:
                raise Conflict(f"VM {vm_id} already has a device with alias {alias}",
                               vm_id=vm_id, alias=alias)
            meta = metadata.read(domxml.parse_domain(live))
            device_xml = hooks.run("before_device_create", device_xml, vm_id,
                                   self.config.hooks_dir, meta.custom_properties,
                                   owner_uid=self.hook_owner_uid)
            if volume is not None:
                volumes.prepare([volume, *(chain or [])], self.config.storage_domains)
            flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
            if dom.isPersistent():
                flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
            with libvirt_errors(f"attach device {alias} to", vm_id):
                dom.attachDeviceFlags(device_xml, flags)
                live = dom.XMLDesc(0)
        plugged = find_by_alias(live, alias)
        return {"id": vm_id, "alias": alias,
                "xml": ET.tostring(plugged, encoding="unicode") if plugged is not None else None}

    def unplug_device(self, vm_id: str, alias: str, timeout: float) -> dict:
        """Ask the guest to release a device and wait until libvirt says it is gone.

        Unplug needs the guest's cooperation (PCI hot-unplug); a guest that
        does not release the device within ``timeout`` s gets a Conflict saying
        so, and the request stays pending in QEMU as on any libvirt host.
        """
        with self.vm_lock(vm_id):
            dom = self.lookup(vm_id)
            with libvirt_errors("read the XML of", vm_id):
                live = dom.XMLDesc(0)
            if find_by_alias(live, alias) is None:
                raise NotFound(f"device of VM {vm_id} with alias", alias)
            flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
            if dom.isPersistent():
                flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
            with libvirt_errors(f"detach device {alias} from", vm_id):
                dom.detachDeviceAlias(alias, flags)
            deadline = time.monotonic() + timeout
            while True:
                with libvirt_errors("read the XML of", vm_id):
                    gone = find_by_alias(dom.XMLDesc(0), alias) is None
                if gone:
                    return {"id": vm_id, "alias": alias, "removed": True}
                if time.monotonic() >= deadline:
                    raise Conflict(f"the guest of VM {vm_id} did not release device {alias} "
                                   f"within {timeout:g} s; the unplug request stays pending",
                                   vm_id=vm_id, alias=alias, pending=True)
                time.sleep(_POLL / 4)

    # -- statistics ----------------------------------------------------------------

    def stats(self) -> dict:
        """The engine's VM poll in one request: every VM GET /vms lists, each running one
        with its counters and rates (one getAllDomainStats call for them all), and the
        host's figures."""
        conn = self.connection()
        first_poll = self._sampler.first_poll()
        with libvirt_errors("collect statistics"):
            records = conn.getAllDomainStats(
                stats.GROUPS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
            cpu = conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
            memory_mib = conn.getInfo()[1]
            free_mib = conn.getFreeMemory() // MiB
            available_kib, total_kib = ballooning.host_memory_kib(conn)
        running = {dom.UUIDString(): self._vm_stats(dom, raw) for dom, raw in records
                   if dom.UUIDString() in self.registry}
        self._sampler.forget_others(set(running))
        # Status as GET /vms has it; a VM that stopped meanwhile keeps no counters.
        vms = [{**vm, **{key: running[vm["id"]][key] for key in _COUNTERS}}
               if vm["id"] in running else vm for vm in self.list_vms()]
        host = {
            "cpu": {"user_ns": cpu.get("user"), "kernel_ns": cpu.get("kernel"),
                    "idle_ns": cpu.get("idle"), "iowait_ns": cpu.get("iowait"),
                    "percent": self._host_cpu.percent()},
            "memory_mib": memory_mib,
            "free_memory_mib": free_mib,
            # Page cache and buffers are not used: the kernel gives them back on demand.
            "used_memory_mib": max(0, (total_kib - available_kib) // 1024),
            "load": [round(load, 2) for load in os.getloadavg()],
            **stats.host_rates(first_poll, (vm["rates"] for vm in running.values())),
            "running_vms": len(records),
            "vm_count": len(self.registry.all()),
            "ballooning": self.ballooning.report(),
        }
        return {"host": host, "vms": vms}

    def _node_cpu_times(self) -> dict[str, int]:
        with libvirt_errors("read the host's CPU times"):
            return self.connection().getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)

    def vm_stats(self, vm_id: str) -> dict:
        """One VM's counters (a VM that is not running has only its state)."""
        dom = self.lookup(vm_id)
        with libvirt_errors("collect statistics of", vm_id):
            records = self.connection().domainListGetStats([dom], stats.GROUPS)
        if not records:
            raise VmNotFound(vm_id)
        return self._vm_stats(*records[0])

    def _vm_stats(self, dom: libvirt.virDomain, raw: dict) -> dict:
        vm_id = dom.UUIDString()
        record = self.registry.get(vm_id)
        state = raw.get("state.state", states.SHUTOFF)
        status = record.status if record is not None else states.status_and_exit_reason(
            state, raw.get("state.reason", 0))[0]
        report = {"id": vm_id, "name": dom.name(), "status": status.value,
                  "state": states.state_name(state), **stats.vm_stats(raw)}
        if "cpu.time" in raw:
            report["cpu"]["percent"] = self._sampler.vm_cpu_percent(vm_id, raw["cpu.time"])
        report["rates"] = self._sampler.vm_rates(vm_id, stats.io_counters(report))
        report["devices_hash"] = self._devices_hashes.get(dom)
        target = self.ballooning.target_kib(vm_id)
        if target is not None:
            report["memory"]["target_kib"] = target  # current_kib is where the guest is
        return report

    # -- volumes -------------------------------------------------------------------

    def delete_volumes(self, locations: list[volumes.VolumeLocation]) -> list[dict]:
        return volumes.delete(locations, self.config.storage_domains, self.disks_in_use())

    def resize_volume(self, location: volumes.VolumeLocation, fmt: str, size_mib: int) -> dict:
        """Grow a volume: live through QEMU when a running domain here uses it."""
        storage = self.config.storage_domains
        path = location.checked_path(storage)  # no link on the way: its realpath is inside
        real = os.path.realpath(path)
        with libvirt_errors("list domains"):
            domains = self.connection().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        for dom in domains:
            sources: set[str] = set()
            with contextlib.suppress(libvirt.libvirtError):
                sources = domxml.disk_sources(dom.XMLDesc(0))
            for source in sources:
                if os.path.realpath(source) == real:
                    current = volumes.virtual_size_mib(location, storage, fmt)
                    if current >= size_mib:
                        return {"path": path, "resized": False, "exists": True,
                                "size_mib": current, "live": True}
                    with libvirt_errors("grow a disk of", dom.UUIDString()):
                        dom.blockResize(source, size_mib * MiB,
                                        libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                    return {"path": path, "resized": True, "exists": True, "size_mib": size_mib,
                            "live": True}
        return {**volumes.grow(location, storage, fmt, size_mib), "live": False}

    def disks_in_use(self) -> set[str]:
        """Disk files of every domain defined or running here (live and next-boot XML)."""
        used: set[str] = set()
        with libvirt_errors("list domains"):
            domains = self.connection().listAllDomains(0)
        for dom in domains:
            flags = [0] + ([libvirt.VIR_DOMAIN_XML_INACTIVE] if dom.isPersistent() else [])
            for flag in flags:
                with contextlib.suppress(libvirt.libvirtError):
                    used |= domxml.disk_sources(dom.XMLDesc(flag))
        return used
