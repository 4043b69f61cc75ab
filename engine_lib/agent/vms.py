"""The agent's libvirt side: start, stop, remove and report this host's VMs.

Every libvirt failure leaves here as a typed error (VmNotFound, LibvirtError,
...) naming the VM and the operation, so the HTTP layer only serializes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt

import engine_lib
from engine_lib import placeholders
from engine_lib.agent import domxml, states, volumes
from engine_lib.agent.config import AgentConfig
from engine_lib.errors import Conflict, InvalidSpec, LibvirtError, NotFound, VmNotFound

MiB = 1024 * 1024
START_MODES = ("fresh",)
_UNDEFINE_FLAGS = (libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
                   | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                   | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                   | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
_POLL = 0.2
# A guest that is still booting (or busy) may miss a power button press, as
# real ones do; press again at this interval until the timeout.
ACPI_REPEAT = 5.0

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
        # VMs this agent asked to shut down and is waiting for: "PoweringDown".
        self._powering_down: set[str] = set()

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
            try:
                self._conn = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                raise LibvirtError(f"cannot connect to libvirt at {uri}: "
                                   f"{exc.get_error_message()}", uri=uri) from None
            return self._conn

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def _vm_lock(self, vm_id: str) -> Iterator[None]:
        """Serialize state changes of one VM (two starts must not race)."""
        with self._vm_locks_lock:
            lock = self._vm_locks.setdefault(vm_id, threading.Lock())
        with lock:
            yield

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
        host = domxml.resolve(xml, self.config.paths, self.config.storage_domains)
        with self._vm_lock(host.uuid):
            existing = self._find(host.uuid)
            if existing is not None and existing.isActive():
                return {**self._status(existing), "started": False}
            self._check_name_free(host.name, host.uuid)
            self._prepare(host)
            conn = self.connection()
            with _libvirt_errors("define", host.uuid):
                dom = conn.defineXMLFlags(host.xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
            try:
                with _libvirt_errors("start", host.uuid):
                    dom.create()
            except LibvirtError:
                if existing is None:  # leave the host as we found it
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefineFlags(_UNDEFINE_FLAGS)
                raise
            self._powering_down.discard(host.uuid)
            return {**self._status(dom), "started": True}

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

    def shutdown(self, vm_id: str, timeout: float) -> dict:
        """Press the ACPI power button (again every ACPI_REPEAT s); destroy after ``timeout`` s.

        Not under the VM lock: a destroy must be able to cut a long shutdown short.
        """
        dom = self._lookup(vm_id)
        forced = False
        if dom.isActive():
            self._powering_down.add(vm_id)
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
            finally:
                self._powering_down.discard(vm_id)
        return {**self._status(dom), "forced": forced}

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
            self._destroy(dom, vm_id)
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
            dom = self._lookup(vm_id)
            if dom.isActive():
                raise Conflict(f"VM {vm_id} is running on this host; destroy or shut it "
                               "down before removing it", vm_id=vm_id)
            with _libvirt_errors("undefine", vm_id):
                if dom.isPersistent():
                    dom.undefineFlags(_UNDEFINE_FLAGS)
            return {"id": vm_id, "removed": True}

    # -- reporting ---------------------------------------------------------------

    def status(self, vm_id: str) -> dict:
        return self._status(self._lookup(vm_id))

    def _status(self, dom: libvirt.virDomain) -> dict:
        vm_id = dom.UUIDString()
        with _libvirt_errors("read the state of", vm_id):
            state, reason = dom.state()
            _, _, memory_kib, vcpus, cpu_time = dom.info()
            persistent = bool(dom.isPersistent())
        status = states.vm_status(state, reason, powering_down=vm_id in self._powering_down)
        report = {"id": vm_id, "name": dom.name(), "status": status.value,
                  "state": states.state_name(state), "reason": reason,
                  "persistent": persistent, "vcpus": vcpus,
                  "memory_mib": memory_kib // 1024, "cpu_time_ns": cpu_time}
        if state == states.SHUTOFF and 0 <= reason < len(states.SHUTOFF_REASONS):
            report["exit_reason"] = states.SHUTOFF_REASONS[reason]
        return report

    def list_vms(self) -> list[dict]:
        with _libvirt_errors("list domains"):
            domains = self.connection().listAllDomains(0)
        report = []
        for dom in domains:
            try:
                report.append(self._status(dom))
            except VmNotFound:
                continue  # undefined while we listed
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
            "agent_version": engine_lib.__version__,
            "storage_domains": [_storage_domain(name, path) for name, path
                                in sorted(self.config.storage_domains.items())],
        }

    # -- volumes -------------------------------------------------------------------

    def delete_volumes(self, locations: list[volumes.VolumeLocation]) -> list[dict]:
        return volumes.delete(locations, self.config.storage_domains, self._disks_in_use())

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


def _storage_domain(name: str, path: str) -> dict:
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return {"name": name, "path": path, "available": False, "error": exc.strerror}
    return {"name": name, "path": path, "available": True,
            "total_mib": st.f_blocks * st.f_frsize // MiB,
            "free_mib": st.f_bavail * st.f_frsize // MiB}
