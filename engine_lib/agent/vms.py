"""The agent's libvirt side: start, stop, pause, remove and report this host's VMs.

Every libvirt failure leaves here as a typed error (VmNotFound, LibvirtError,
...) naming the VM and the operation, so the HTTP layer only serializes.

Statuses come from the registry (engine_lib.agent.registry): libvirt
lifecycle events update it as they happen, the operations here as they go,
and every (re)connection to libvirt rebuilds it from the domains that carry
our metadata: that is the recovery start mode, an agent restarted while its
VMs run finds them all, in their true state, without touching them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from xml.sax.saxutils import quoteattr

import libvirt

import engine_lib
from engine_lib.agent import (
    ballooning,
    domxml,
    event_stream,
    guest_agent,
    hibernation,
    hooks,
    hotplug,
    libvirt_events,
    migration,
    payload,
    registry,
    states,
    stats,
    volumes,
)
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.devices_hash import DevicesHashes
from engine_lib.agent.states import VmStatus
from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.devices import device_alias, find_by_alias
from engine_lib.protocol.errors import (
    Conflict,
    GuestAgentUnavailable,
    HookError,
    InvalidSpec,
    KestrelError,
    LibvirtError,
    NotFound,
    VmNotFound,
)

log = logging.getLogger("kestrel.agent.vms")

MiB = 1024 * 1024
START_MODES = ("fresh", "incoming")
_UNDEFINE_FLAGS = (libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
                   | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                   | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                   | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
_POLL = 0.2
# How long one question to qemu-guest-agent may take: a guest without an
# answering agent must not hold an API thread (libvirt's default is to block).
GUEST_AGENT_TIMEOUT = 5
# Guests asked at once by guests_info(): a few silent guest agents, each taking
# GUEST_AGENT_TIMEOUT, must not add up to minutes on a host with many VMs.
GUEST_AGENT_WORKERS = 8
# libvirt's answers when the guest agent is missing, not connected or silent.
_NO_GUEST_AGENT = {libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_AGENT_UNSYNCED,
                   libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, libvirt.VIR_ERR_OPERATION_UNSUPPORTED}
# A guest that is still booting (or busy) may miss a power button press, as
# real ones do; press again at this interval until the timeout.
ACPI_REPEAT = 5.0

# Why a VM stopped, noted in the stopped domain's own metadata (our agent namespace,
# not the engine's) so that an agent restarted meanwhile still knows it.
EXIT_NAMESPACE = "https://kestrel.virt/xmlns/agent-exit/1"
_EXIT_KEY = "kestrel-exit"

# libvirt prints every error to stderr by default; ours become typed errors instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@contextlib.contextmanager
def _libvirt_errors(action: str, vm_id: str | None = None) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        if vm_id and exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise VmNotFound(vm_id) from None
        target = f" VM {vm_id}" if vm_id else ""
        raise LibvirtError(f"libvirt could not {action}{target}: {exc.get_error_message()}",
                           libvirt_code=exc.get_error_code(), vm_id=vm_id) from None


def _version(number: int) -> str:
    major, rest = divmod(number, 1_000_000)
    minor, micro = divmod(rest, 1000)
    return f"{major}.{minor}.{micro}"


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
        self._devices_hashes = DevicesHashes()
        self.migrations = migration.Migrations(self)
        # Issue 9: shrinks/grows balloons of VMs whose cluster allows it; started by Api.start.
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
                self._recover(conn)
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

    def _recover(self, conn: libvirt.virConnect) -> None:
        """Put every domain with our metadata into the registry in its true state.

        Runs on every (re)connection. Nothing is started, stopped or redefined.
        A VM the registry already has Down stays Down with the reason it knows
        (libvirt would only say "shutdown" where we know "user shutdown").
        """
        seen = set()
        for dom in conn.listAllDomains(0):
            try:
                if not _is_ours(dom):
                    continue
                vm_id = dom.UUIDString()
                status, reason = _libvirt_status(dom)
                name = dom.name()
            except libvirt.libvirtError:
                continue  # undefined while we listed
            seen.add(vm_id)
            known = self.registry.get(vm_id)
            if known is not None and known.status == VmStatus.DOWN == status:
                continue
            if status == VmStatus.DOWN:
                reason = _remembered_exit(dom) or reason
            self.registry.set(vm_id, name, status, reason)
            log.info("recovered VM %s (%s): %s", name, vm_id, status.value)
        for record in self.registry.all():
            if record.id not in seen and record.status != VmStatus.DOWN:
                self.registry.set(record.id, record.name, VmStatus.DOWN,
                                  "gone from libvirt while the agent was disconnected")

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
            if event in (registry.UNDEFINED, registry.STOPPED) or not _is_ours(dom):
                return
            status, reason = _libvirt_status(dom)
            self.registry.set(vm_id, dom.name(), status, reason)
            return
        if event in (registry.STOPPED, registry.CRASHED) and _is_active(dom):
            return  # stale: the VM was started again before this event was dispatched
        if event in (registry.STARTED, registry.RESUMED) and not _is_active(dom):
            return  # stale: it went down again meanwhile
        record = self.registry.on_event(vm_id, event, detail)
        if record is not None and record.status == VmStatus.DOWN and record.exit_reason:
            # Only while no operation holds the VM: a start in flight redefines the
            # domain, and a note written now would land on the new definition. The
            # event thread never waits for that lock (it must not block libvirt).
            with self._vm_lock_if_free(vm_id) as held:
                if held:
                    _remember_exit(dom, record.exit_reason)
        if record is not None:
            log.info("VM %s (%s): %s/%s -> %s%s", record.name, vm_id,
                     registry.EVENT_NAMES[event] if event < len(registry.EVENT_NAMES) else event,
                     detail, record.status.value,
                     f" ({record.exit_reason})" if record.exit_reason else "")

    @contextlib.contextmanager
    def _vm_lock(self, vm_id: str) -> Iterator[None]:
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

    def _lookup(self, vm_id: str) -> libvirt.virDomain:
        with _libvirt_errors("look up", vm_id):
            return self.connection().lookupByUUIDString(vm_id)

    def _find(self, vm_id: str) -> libvirt.virDomain | None:
        try:
            return self._lookup(vm_id)
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
        with self._vm_lock(host.uuid):
            existing = self._find(host.uuid)
            if existing is not None and existing.isActive():
                self._ensure_registered(existing)
                return {**self._status(existing), "started": False}
            self._check_name_free(host.name, host.uuid)
            final_xml = self._before_start_hooks(host)
            previous = self.registry.get(host.uuid)
            self.registry.set(host.uuid, host.name, VmStatus.WAIT_FOR_LAUNCH)
            try:
                self._prepare(host)
                conn = self.connection()
                with _libvirt_errors("define", host.uuid):
                    dom = conn.defineXMLFlags(final_xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
                try:
                    with _libvirt_errors("start", host.uuid):
                        dom.create()
                except LibvirtError:
                    if existing is None:  # leave the host as we found it
                        with contextlib.suppress(libvirt.libvirtError):
                            dom.undefineFlags(_UNDEFINE_FLAGS)
                    raise
            except KestrelError:
                if previous is None:
                    self.registry.remove(host.uuid)
                else:
                    self.registry.set(previous.id, previous.name, previous.status,
                                      previous.exit_reason)
                raise
            # A stopped event dispatched late (between define and create) may have
            # noted an old exit reason on the new definition: this run has none.
            _forget_exit(dom)
            self.registry.set(host.uuid, host.name, *_libvirt_status(dom))
            warnings = self._after_hooks("after_vm_start", dom, host.metadata)
            return {**self._status(dom), "started": True, **warnings}

    def _before_start_hooks(self, host: domxml.HostDomain) -> str:
        """Run before_vm_start over the resolved XML; the XML the scripts leave is used."""
        xml = hooks.run("before_vm_start", host.xml, host.uuid, self.config.hooks_dir,
                        host.metadata.custom_properties, owner_uid=self.hook_owner_uid)
        if xml == host.xml:
            return xml
        try:
            root = domxml.parse_domain(xml)
            changed_id = domxml.domain_uuid(root)
        except InvalidSpec as exc:
            raise HookError(f"before_vm_start hooks left XML that is not a domain: "
                            f"{exc.reason}", hook_point="before_vm_start") from None
        if changed_id != host.uuid:
            raise HookError(f"before_vm_start hooks changed the domain UUID from {host.uuid} "
                            f"to {changed_id}; it is the VM id and must stay",
                            hook_point="before_vm_start")
        return xml

    def _hook_xml(self, point: str, dom: libvirt.virDomain,
                  meta: metadata.VmMetadata | None = None) -> None:
        """Run a hook point over a domain's live XML (the result is not used)."""
        vm_id = dom.UUIDString()
        if not hooks.scripts_of(point, self.config.hooks_dir, owner_uid=self.hook_owner_uid):
            return
        with _libvirt_errors("read the XML of", vm_id):
            xml = dom.XMLDesc(0)
        if meta is None:
            meta = metadata.read(domxml.parse_domain(xml))
        hooks.run(point, xml, vm_id, self.config.hooks_dir, meta.custom_properties,
                  owner_uid=self.hook_owner_uid)

    def _after_hooks(self, point: str, dom: libvirt.virDomain,
                     meta: metadata.VmMetadata | None = None) -> dict:
        """after_* hooks run once the operation is done: a failure cannot undo it, so
        it is logged and reported as ``hook_warnings`` rather than raised (as VDSM does)."""
        try:
            self._hook_xml(point, dom, meta)
        except (HookError, LibvirtError) as exc:
            log.warning("VM %s: %s", dom.UUIDString(), exc.message)
            return {"hook_warnings": [exc.message]}
        return {}

    def run_hook(self, point: str, vm_id: str) -> None:
        """Run a hook point over a VM's live XML: for operations (migration, hibernation)
        that call hooks themselves. Raises HookError naming the script and its stderr."""
        self._hook_xml(point, self._lookup(vm_id))

    def _check_name_free(self, name: str, vm_id: str) -> None:
        try:
            other = self.connection().lookupByName(name)
        except libvirt.libvirtError:
            return
        if other.UUIDString() != vm_id:
            raise Conflict(f"a different domain named '{name}' ({other.UUIDString()}) "
                           "is defined on this host", name=name, vm_id=vm_id)

    def _prepare(self, host: domxml.HostDomain) -> None:
        """Make what libvirt expects to exist: directories for logs and sockets, volumes."""
        for kind in ("console", "channels", "nvram", "payload"):
            for path in host.paths.get(kind, []):
                os.makedirs(os.path.dirname(path), exist_ok=True)
        volumes.prepare(host.metadata.volumes, self.config.storage_domains)
        seed = payload.read(domxml.parse_domain(host.xml))
        if seed is not None:
            payload.build(seed, self.config.resolve(placeholders.payload(host.uuid)))

    def _remove_payload(self, vm_id: str) -> None:
        """Delete the VM's cloud-init ISO (a host without a payload root never wrote one)."""
        if "payload" in self.config.paths:
            payload.remove(self.config.resolve(placeholders.payload(vm_id)))

    def shutdown(self, vm_id: str, timeout: float) -> dict:
        """Press the ACPI power button (again every ACPI_REPEAT s); destroy after ``timeout`` s.

        Not under the VM lock: a destroy must be able to cut a long shutdown short.
        """
        dom = self._lookup(vm_id)
        forced = False
        warnings: dict = {}
        if dom.isActive():
            self._hook_xml("before_vm_destroy", dom)
            self._ensure_registered(dom)
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
                    self._record_down(dom, "destroyed" if forced else registry.ADMIN_SHUTDOWN)
            finally:
                self.registry.request_shutdown(vm_id, False)
            warnings = self._after_hooks("after_vm_destroy", dom)
        return {**self._status(dom), "forced": forced, **warnings}

    def _ensure_registered(self, dom: libvirt.virDomain) -> None:
        if dom.UUIDString() not in self.registry:
            self.registry.set(dom.UUIDString(), dom.name(), *_libvirt_status(dom))

    def _record_down(self, dom: libvirt.virDomain, reason: str) -> None:
        """Down with the reason the agent knows, unless an event already said why."""
        record = self.registry.get(dom.UUIDString())
        if record is None or record.status != VmStatus.DOWN:
            self.registry.set(dom.UUIDString(), dom.name(), VmStatus.DOWN, reason)
            _remember_exit(dom, reason)

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
        with self._vm_lock(vm_id):
            dom = self._lookup(vm_id)
            if not dom.isActive():
                return self._status(dom)
            self._hook_xml("before_vm_destroy", dom)
            self._ensure_registered(dom)
            if self._destroy(dom, vm_id):
                self._record_down(dom, "destroyed")
            return {**self._status(dom), **self._after_hooks("after_vm_destroy", dom)}

    def pause(self, vm_id: str) -> dict:
        """Pause the guest's CPUs (Paused); pausing a paused VM changes nothing."""
        return self._pause_or_resume(vm_id, pause=True)

    def resume(self, vm_id: str) -> dict:
        """Let a paused guest run again (Up); resuming a running VM changes nothing."""
        return self._pause_or_resume(vm_id, pause=False)

    def _pause_or_resume(self, vm_id: str, pause: bool) -> dict:
        action = "pause" if pause else "resume"
        with self._vm_lock(vm_id):
            dom = self._lookup(vm_id)
            with _libvirt_errors("read the state of", vm_id):
                state, _ = dom.state()
            if state not in (states.RUNNING, states.BLOCKED, states.PAUSED):
                raise Conflict(f"cannot {action} VM {vm_id}: it is "
                               f"{states.state_name(state)}, not running", vm_id=vm_id,
                               state=states.state_name(state))
            if (state == states.PAUSED) != pause:
                with _libvirt_errors(action, vm_id):
                    if pause:
                        dom.suspend()
                    else:
                        dom.resume()
            self.registry.set(vm_id, dom.name(), *_libvirt_status(dom))
            return self._status(dom)

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
        with self._vm_lock(vm_id):
            dom = self._find(vm_id)
            if dom is None:
                if vm_id not in self.registry:
                    raise VmNotFound(vm_id)
                self.registry.remove(vm_id)  # Down, and libvirt forgot it already
                self._remove_payload(vm_id)
                return {"id": vm_id, "removed": True}
            if dom.isActive():
                raise Conflict(f"VM {vm_id} is running on this host; destroy or shut it "
                               "down before removing it", vm_id=vm_id)
            with _libvirt_errors("undefine", vm_id):
                if dom.isPersistent():
                    dom.undefineFlags(_UNDEFINE_FLAGS)
            self.registry.remove(vm_id)
            self._remove_payload(vm_id)
            return {"id": vm_id, "removed": True}

    # -- reporting ---------------------------------------------------------------

    def status(self, vm_id: str) -> dict:
        """The registry's status, with libvirt's details while libvirt has the domain.

        A domain without our metadata is still reported (from libvirt alone);
        a VM that went Down and that libvirt forgot is reported from the registry.
        """
        self.connection()  # the registry is rebuilt on (re)connection
        dom = self._find(vm_id)
        if dom is None:
            record = self.registry.get(vm_id)
            if record is None:
                raise VmNotFound(vm_id)
            return record.report()
        return self._status(dom)

    def _status(self, dom: libvirt.virDomain) -> dict:
        vm_id = dom.UUIDString()
        with _libvirt_errors("read the state of", vm_id):
            state, reason = dom.state()
            _, _, memory_kib, vcpus, cpu_time = dom.info()
            persistent = bool(dom.isPersistent())
            domain_id = dom.ID()
        record = self.registry.get(vm_id)
        if record is not None:
            status, exit_reason = record.status, record.exit_reason
        else:
            status, exit_reason = _status_of(state, reason)
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
        dom = self._lookup(vm_id)
        with _libvirt_errors("read the XML of", vm_id):
            return {"id": vm_id, "xml": dom.XMLDesc(0)}

    def console_log(self, vm_id: str, nbytes: int) -> dict:
        """The last ``nbytes`` of the serial console log (kept after the VM is removed)."""
        path = None
        dom = self._find(vm_id)
        if dom is not None:
            with _libvirt_errors("read the XML of", vm_id):
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
        conn = self.connection()
        with _libvirt_errors("describe the host"):
            caps = ET.fromstring(conn.getCapabilities())
            _, memory_mib, cpus, *_ = conn.getInfo()
            free_mib = conn.getFreeMemory() // MiB
            libvirt_version = _version(conn.getLibVersion())
            qemu_version = _version(conn.getVersion())
            running = conn.numOfDomains()
        return {
            "name": self.config.name,
            "hostname": socket.gethostname(),
            "host_uuid": caps.findtext("host/uuid"),
            "cpu_model": caps.findtext("host/cpu/model"),
            "cpus": cpus,
            "memory_mib": memory_mib,
            "free_memory_mib": free_mib,
            "libvirt_version": libvirt_version,
            "qemu_version": qemu_version,
            "kvm": os.path.exists("/dev/kvm"),
            "running_vms": running,
            # What the scheduler's filters compare a VM against.
            "machines": _machines(caps),
            "networks": _bridges(),
            "hooks": hooks.installed(self.config.hooks_dir, owner_uid=self.hook_owner_uid),
            "hugepages": _free_hugepages(),
            "used_memory_mib": memory_mib - free_mib,
            "agent_version": engine_lib.__version__,
            "storage_domains": [_storage_domain(name, path) for name, path
                                in sorted(self.config.storage_domains.items())],
        }

    # -- hibernation and reboot ------------------------------------------------------

    def hibernate(self, vm_id: str, location: volumes.VolumeLocation) -> dict:
        """Save the VM's memory to a storage domain (engine_lib.agent.hibernation)."""
        return hibernation.hibernate(self, vm_id, location)

    def restore(self, xml: str, location: volumes.VolumeLocation) -> dict:
        """Start mode "restore": the saved VM runs on where it was hibernated."""
        return hibernation.restore(self, xml, location)

    def reboot(self, vm_id: str) -> dict:
        """ACPI reboot (libvirt turns the guest's power-off into a reset, so the QEMU
        process stays); a hard reset where libvirt cannot send ACPI to the domain.

        A guest that ignores the ACPI request is not reset behind its back, as
        with a real machine's power button."""
        with self._vm_lock(vm_id):
            dom = self._lookup(vm_id)
            if not _is_active(dom):
                raise Conflict(f"cannot reboot VM {vm_id}: it is not running", vm_id=vm_id)
            try:
                dom.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
                method = "acpi"
            except libvirt.libvirtError as exc:
                log.info("VM %s: ACPI reboot refused (%s); resetting", vm_id,
                         exc.get_error_message())
                with _libvirt_errors("reset", vm_id):
                    dom.reset(0)
                method = "reset"
            return {**self._status(dom), "method": method}

    # -- guest agent ---------------------------------------------------------------

    def guest_info(self, vm_id: str) -> dict:
        """What qemu-guest-agent reports (see engine_lib.agent.guest_agent).

        A VM that is not running, has no guest-agent channel, or whose agent does
        not answer within GUEST_AGENT_TIMEOUT s: GuestAgentUnavailable.
        """
        dom = self._lookup(vm_id)
        if not _is_active(dom):
            raise GuestAgentUnavailable(f"guest agent of VM {vm_id} not responding: the VM "
                                        "is not running", vm_id=vm_id)
        try:
            dom.agentSetResponseTimeout(GUEST_AGENT_TIMEOUT, 0)
            info = dom.guestInfo(0, 0)
            addresses = dom.interfaceAddresses(
                libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in _NO_GUEST_AGENT or not _is_active(dom):
                raise GuestAgentUnavailable(f"guest agent of VM {vm_id} not responding: "
                                            f"{exc.get_error_message()}", vm_id=vm_id) from None
            raise LibvirtError(f"libvirt could not query the guest agent of VM {vm_id}: "
                               f"{exc.get_error_message()}", vm_id=vm_id,
                               libvirt_code=exc.get_error_code()) from None
        return {"id": vm_id, **guest_agent.report(info, addresses)}

    def guests_info(self) -> dict:
        """guest_info() of every Up VM: {"guests": {id: report}, "unavailable": {id: why}}.

        The engine's VM poll asks once per host instead of once per VM (a request is
        a TLS handshake: 500 VMs took longer than the poll interval).
        """
        vm_ids = [vm["id"] for vm in self.list_vms() if vm["status"] == VmStatus.UP]
        answer: dict = {"guests": {}, "unavailable": {}}
        if not vm_ids:
            return answer

        def ask(vm_id: str) -> tuple[str, dict | None, str]:
            try:
                report = self.guest_info(vm_id)
            except (GuestAgentUnavailable, LibvirtError, VmNotFound) as err:
                return vm_id, None, err.message
            report.pop("id")
            return vm_id, report, ""

        with ThreadPoolExecutor(min(GUEST_AGENT_WORKERS, len(vm_ids)),
                                thread_name_prefix="guest-agent") as pool:
            for vm_id, report, why in pool.map(ask, vm_ids):
                if report is None:
                    answer["unavailable"][vm_id] = why
                else:
                    answer["guests"][vm_id] = report
        return answer

    # -- hotplug -------------------------------------------------------------------

    def plug_device(self, vm_id: str, xml: str,
                    volume: metadata.VolumeRef | None = None) -> dict:
        """Attach a disk or NIC to a running VM (and to its definition, if persistent).

        The device's volume is created first when given and missing; the
        before_device_create hooks see the resolved device XML and the XML
        they leave is attached. Returns the live device (with its address).
        """
        device = hotplug.parse_device(xml)
        alias = device_alias(device)
        device_xml, _ = hotplug.resolve(device, self.config.paths, self.config.storage_domains)
        with self._vm_lock(vm_id):
            dom = self._lookup(vm_id)
            if not _is_active(dom):
                raise Conflict(f"cannot hotplug into VM {vm_id}: it is not running",
                               vm_id=vm_id)
            with _libvirt_errors("read the XML of", vm_id):
                live = dom.XMLDesc(0)
            if find_by_alias(live, alias) is not None:
                raise Conflict(f"VM {vm_id} already has a device with alias {alias}",
                               vm_id=vm_id, alias=alias)
            meta = metadata.read(domxml.parse_domain(live))
            device_xml = hooks.run("before_device_create", device_xml, vm_id,
                                   self.config.hooks_dir, meta.custom_properties,
                                   owner_uid=self.hook_owner_uid)
            if volume is not None:
                volumes.prepare([volume], self.config.storage_domains)
            flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
            if dom.isPersistent():
                flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
            with _libvirt_errors(f"attach device {alias} to", vm_id):
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
        with self._vm_lock(vm_id):
            dom = self._lookup(vm_id)
            with _libvirt_errors("read the XML of", vm_id):
                live = dom.XMLDesc(0)
            if find_by_alias(live, alias) is None:
                raise NotFound(f"device of VM {vm_id} with alias", alias)
            flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
            if dom.isPersistent():
                flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
            with _libvirt_errors(f"detach device {alias} from", vm_id):
                dom.detachDeviceAlias(alias, flags)
            deadline = time.monotonic() + timeout
            while True:
                with _libvirt_errors("read the XML of", vm_id):
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
        """Host counters and those of every running VM in the registry, in one libvirt call."""
        conn = self.connection()
        with _libvirt_errors("collect statistics"):
            records = conn.getAllDomainStats(
                stats.GROUPS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
            cpu = conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
            memory_mib = conn.getInfo()[1]
            free_mib = conn.getFreeMemory() // MiB
        ours = [(dom, raw) for dom, raw in records if dom.UUIDString() in self.registry]
        self._sampler.forget_others({dom.UUIDString() for dom, _ in ours})
        host = {
            "cpu": {"user_ns": cpu.get("user"), "kernel_ns": cpu.get("kernel"),
                    "idle_ns": cpu.get("idle"), "iowait_ns": cpu.get("iowait"),
                    "percent": self._sampler.host_cpu_percent(cpu)},
            "memory_mib": memory_mib,
            "free_memory_mib": free_mib,
            "running_vms": len(records),
            "vm_count": len(self.registry.all()),
            "ballooning": self.ballooning.report(),
        }
        return {"host": host, "vms": [self._vm_stats(dom, raw) for dom, raw in ours]}

    def vm_stats(self, vm_id: str) -> dict:
        """One VM's counters (a VM that is not running has only its state)."""
        dom = self._lookup(vm_id)
        with _libvirt_errors("collect statistics of", vm_id):
            records = self.connection().domainListGetStats([dom], stats.GROUPS)
        if not records:
            raise VmNotFound(vm_id)
        return self._vm_stats(*records[0])

    def _vm_stats(self, dom: libvirt.virDomain, raw: dict) -> dict:
        vm_id = dom.UUIDString()
        record = self.registry.get(vm_id)
        state = raw.get("state.state", states.SHUTOFF)
        status = record.status if record is not None else _status_of(
            state, raw.get("state.reason", 0))[0]
        report = {"id": vm_id, "name": dom.name(), "status": status.value,
                  "state": states.state_name(state), **stats.vm_stats(raw)}
        if "cpu.time" in raw:
            report["cpu"]["percent"] = self._sampler.vm_cpu_percent(vm_id, raw["cpu.time"])
        report["devices_hash"] = self._devices_hashes.get(dom)
        target = self.ballooning.target_kib(vm_id)
        if target is not None:
            report["memory"]["target_kib"] = target  # current_kib is where the guest is
        return report

    # -- volumes -------------------------------------------------------------------

    def delete_volumes(self, locations: list[volumes.VolumeLocation]) -> list[dict]:
        return volumes.delete(locations, self.config.storage_domains, self._disks_in_use())

    def resize_volume(self, location: volumes.VolumeLocation, fmt: str, size_mib: int) -> dict:
        """Grow a volume: live through QEMU when a running domain here uses it."""
        path = location.path(self.config.storage_domains)
        real = os.path.realpath(path)
        with _libvirt_errors("list domains"):
            domains = self.connection().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        for dom in domains:
            sources: set[str] = set()
            with contextlib.suppress(libvirt.libvirtError):
                sources = domxml.disk_sources(dom.XMLDesc(0))
            for source in sources:
                if os.path.realpath(source) == real:
                    current = volumes.virtual_size_mib(path, fmt)
                    if current >= size_mib:
                        return {"path": path, "resized": False, "exists": True,
                                "size_mib": current, "live": True}
                    with _libvirt_errors("grow a disk of", dom.UUIDString()):
                        dom.blockResize(source, size_mib * MiB,
                                        libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                    return {"path": path, "resized": True, "exists": True, "size_mib": size_mib,
                            "live": True}
        return {**volumes.grow(path, fmt, size_mib), "live": False}

    def _disks_in_use(self) -> set[str]:
        """Disk files of every domain defined or running here (live and next-boot XML)."""
        used: set[str] = set()
        with _libvirt_errors("list domains"):
            domains = self.connection().listAllDomains(0)
        for dom in domains:
            flags = [0] + ([libvirt.VIR_DOMAIN_XML_INACTIVE] if dom.isPersistent() else [])
            for flag in flags:
                with contextlib.suppress(libvirt.libvirtError):
                    used |= domxml.disk_sources(dom.XMLDesc(flag))
        return used


def _machines(caps: ET.Element) -> list[str] | None:
    """Machine types QEMU emulates here, by name and alias ("pc", "pc-i440fx-7.2", "q35", ...).

    None when libvirt lists none (e.g. its test driver): unknown, not "no machine".
    """
    names = set()
    for machine in caps.iterfind("guest/arch[@name='x86_64']/machine"):
        names.add(machine.text or "")
        if machine.get("canonical"):
            names.add(machine.get("canonical"))
    return sorted(n for n in names if n) or None


def _bridges() -> list[str]:
    """Bridges of this host's network namespace: oVirt's logical networks are bridges."""
    try:
        out = subprocess.run(["ip", "-j", "link", "show", "type", "bridge"], check=True,
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot list bridges: %s", exc)
        return []
    return sorted(link["ifname"] for link in json.loads(out or "[]"))


def _free_hugepages(root: str = "/sys/kernel/mm/hugepages") -> dict[str, int]:
    """Free huge pages per page size in KiB, e.g. {"2048": 512}."""
    free = {}
    try:
        sizes = os.listdir(root)
    except OSError:
        return free
    for entry in sizes:  # hugepages-2048kB
        try:
            with open(os.path.join(root, entry, "free_hugepages")) as handle:
                free[entry.removeprefix("hugepages-").removesuffix("kB")] = int(handle.read())
        except (OSError, ValueError):
            continue
    return free


def _storage_domain(name: str, path: str) -> dict:
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return {"name": name, "path": path, "available": False, "error": exc.strerror}
    return {"name": name, "path": path, "available": True,
            "total_mib": st.f_blocks * st.f_frsize // MiB,
            "free_mib": st.f_bavail * st.f_frsize // MiB}


def _is_ours(dom: libvirt.virDomain) -> bool:
    """Whether the domain carries our metadata (the engine created it)."""
    try:
        dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.NAMESPACE, 0)
        return True
    except libvirt.libvirtError:
        return False


def _is_active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False  # a transient domain that stopped is gone


def _status_of(state: int, reason: int) -> tuple[VmStatus, str | None]:
    status = states.vm_status(state, reason)
    exit_reason = None
    if status == VmStatus.DOWN:
        exit_reason = (states.SHUTOFF_REASONS[reason]
                       if state == states.SHUTOFF and 0 <= reason < len(states.SHUTOFF_REASONS)
                       else "crashed" if state == states.CRASHED else "unknown")
    return status, exit_reason


def _libvirt_status(dom: libvirt.virDomain) -> tuple[VmStatus, str | None]:
    """The VM's status as libvirt's state says it (recovery, after an operation)."""
    state, reason = dom.state()
    return _status_of(state, reason)


def _remember_exit(dom: libvirt.virDomain, reason: str) -> None:
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


def _forget_exit(dom: libvirt.virDomain) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, EXIT_NAMESPACE,
                        libvirt.VIR_DOMAIN_AFFECT_CONFIG)


def _remembered_exit(dom: libvirt.virDomain) -> str | None:
    try:
        note = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, EXIT_NAMESPACE,
                            libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        return ET.fromstring(note).get("reason") or None
    except (libvirt.libvirtError, ET.ParseError):
        return None
