"""Live migration on a host: the destination's incoming start and the source's outgoing move.

Destination (``prepare_incoming``, start mode "incoming" of the one start
sequence, engine_lib.agent.vm_start): resolve the engine's XML for this host,
run the before_vm_migrate_destination hooks (a failing hook refuses the
migration), create missing volumes (existing ones are never touched), and
register the VM MigratingTo. libvirt then starts the incoming QEMU when the
source's daemon calls; its RESUMED event makes the VM Up here, a STOPPED event
(the migration failed) forgets it. ``cancel`` on the destination destroys an
incoming domain that never resumed, so a failed migration leaves no copy here.

Source (``start_outgoing``): peer-to-peer between the libvirt daemons
(migrateToURI3), in a thread, while another thread samples the job's progress
and applies the cluster's convergence policy (engine_lib.protocol.convergence).
The domain XML for the destination is our own migratable live XML with this
host's paths replaced by the destination's (what its prepare call resolved):
the engine's XML lacks the device addresses libvirt requires to stay the same.
On failure the source resumes the guest if the migration paused it: the one
running copy stays here. An encrypted migration (``tls``) adds VIR_MIGRATE_TLS, so
QEMU's stream is TLS as well as the qemu+tls connection between the daemons.

The destination gets a persistent definition (VIR_MIGRATE_PERSIST_DEST), as a
fresh start defines one; the source keeps its definition until the completed
job's statistics (the final downtime) are read, then undefines it.

Disk images on the lab's shared storage domains are plain files that libvirt
cannot prove are coherent between hosts, so it calls them unsafe to migrate:
they are shared, QEMU flushes them at switchover, hence VIR_MIGRATE_UNSAFE.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import libvirt

from engine_lib.agent import domxml, registry
from engine_lib.agent.domains import is_running, libvirt_status, undefine
from engine_lib.agent.states import VmStatus
from engine_lib.agent.vm_start import StartSequence
from engine_lib.protocol import convergence, metadata, placeholders
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError, LibvirtError, NotFound

log = logging.getLogger("kestrel.agent.migration")

MAX_OUTGOING = 2
MAX_INCOMING = 2
SAMPLE_INTERVAL = 0.25
# An incoming VM whose source never called is forgotten after this long.
INCOMING_TIMEOUT = 600.0
_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
          | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
          | libvirt.VIR_MIGRATE_UNSAFE)
_MiB = 1024 * 1024


@dataclass
class Outgoing:
    """One outgoing migration as the engine reads it (GET /vms/{id}/migration)."""

    vm_id: str
    destination_uri: str
    policy: str
    bandwidth_mibps: int | None
    status: str = "running"  # running | succeeded | failed | cancelled
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    progress: dict = field(default_factory=dict)
    downtime_ms: int | None = None
    downtime_limit_ms: int = convergence.MINIMAL_STEPS_MS[0]
    error: str | None = None
    steps: list[dict] = field(default_factory=list)
    cancel_requested: bool = False
    postcopy: bool = False
    tls: bool = False

    def report(self) -> dict:
        end = self.finished if self.finished is not None else time.monotonic()
        return {"id": self.vm_id, "role": "source", "status": self.status,
                "destination_uri": self.destination_uri, "policy": self.policy,
                "bandwidth_mibps": self.bandwidth_mibps, "progress": dict(self.progress),
                "downtime_ms": self.downtime_ms, "downtime_limit_ms": self.downtime_limit_ms,
                "duration_s": round(end - self.started, 3), "error": self.error,
                "steps": list(self.steps), "postcopy": self.postcopy,
                "cancel_requested": self.cancel_requested, "tls": self.tls}


class Migrations:
    """This host's migrations in both directions; at most MAX_OUTGOING and MAX_INCOMING."""

    def __init__(self, hypervisor):
        self.hv = hypervisor
        self._lock = threading.Lock()
        self._outgoing: dict[str, Outgoing] = {}
        self._incoming: dict[str, float] = {}  # vm id -> monotonic time prepared

    # -- destination -----------------------------------------------------------------

    def prepare_incoming(self, xml: str) -> dict:
        """Start mode "incoming": make this host ready to receive the VM (IncomingStart)."""
        hv = self.hv
        host = domxml.resolve(xml, hv.config.paths, hv.config.storage_domains)
        answer = IncomingStart(self, xml, host).run()
        timer = threading.Timer(INCOMING_TIMEOUT, self._expire_incoming, (host.uuid,))
        timer.daemon = True
        timer.start()
        return answer

    def claim_incoming(self, vm_id: str) -> None:
        """Count an incoming migration against MAX_INCOMING (a retry holds the same slot)."""
        with self._lock:
            if vm_id not in self._incoming and len(self._incoming) >= MAX_INCOMING:
                raise Conflict(f"this host already receives {len(self._incoming)} "
                               f"migrations (at most {MAX_INCOMING})", vm_id=vm_id,
                               limit=MAX_INCOMING)
            self._incoming[vm_id] = time.monotonic()

    def release_incoming(self, vm_id: str) -> None:
        with self._lock:
            self._incoming.pop(vm_id, None)

    def _expire_incoming(self, vm_id: str) -> None:
        with self._lock:
            if vm_id not in self._incoming:
                return
        if self.hv.find(vm_id) is None:
            log.warning("incoming VM %s: the source never started the migration; forgotten",
                        vm_id)
            self._forget_incoming(vm_id)

    def _forget_incoming(self, vm_id: str) -> None:
        with self._lock:
            self._incoming.pop(vm_id, None)
        record = self.hv.registry.get(vm_id)
        if record is not None and record.status == VmStatus.MIGRATING_TO:
            self.hv.registry.remove(vm_id)

    def on_event(self, dom: libvirt.virDomain, event: int, detail: int) -> bool:
        """Lifecycle events of an incoming VM (event thread); True when handled here."""
        vm_id = dom.UUIDString()
        with self._lock:
            if vm_id not in self._incoming:
                return False
        if event == registry.RESUMED or (event == registry.STARTED and is_running(dom)):
            with self._lock:
                self._incoming.pop(vm_id, None)
            self.hv.registry.set(vm_id, dom.name(), VmStatus.UP)
            log.info("incoming VM %s (%s) is Up here", dom.name(), vm_id)
            threading.Thread(target=self._after_incoming, args=(vm_id,), daemon=True,
                             name=f"after-migrate-{vm_id[:8]}").start()
        elif event in (registry.STOPPED, registry.CRASHED, registry.UNDEFINED):
            log.info("incoming VM %s: the migration failed (%s/%s); no copy here", vm_id,
                     event, detail)
            self._forget_incoming(vm_id)
        return True

    def _after_incoming(self, vm_id: str) -> None:
        dom = self.hv.find(vm_id)
        if dom is not None:
            self.hv.run_after_hook("after_vm_migrate_destination", dom)

    # -- source ----------------------------------------------------------------------

    def start_outgoing(self, vm_id: str, destination_uri: str, paths: dict[str, str],
                       policy: str, bandwidth_mibps: int | None, *, tls: bool = False) -> dict:
        convergence.check_policy(policy)
        hv = self.hv
        with hv.vm_lock(vm_id):
            dom = hv.lookup(vm_id)
            if not dom.isActive():
                raise Conflict(f"VM {vm_id} is not running on this host; nothing to migrate",
                               vm_id=vm_id)
            with self._lock:
                current = self._outgoing.get(vm_id)
                if current is not None and current.status == "running":
                    raise Conflict(f"VM {vm_id} is already migrating", vm_id=vm_id)
                running = sum(1 for o in self._outgoing.values() if o.status == "running")
                if running >= MAX_OUTGOING:
                    raise Conflict(f"this host already sends {running} migrations (at most "
                                   f"{MAX_OUTGOING})", vm_id=vm_id, limit=MAX_OUTGOING)
                record = Outgoing(vm_id, destination_uri, policy, bandwidth_mibps, tls=tls)
                self._outgoing[vm_id] = record
            try:
                hv.run_domain_hook("before_vm_migrate_source", dom)
                dest_xml, persist_xml = self._destination_xml(dom, paths)
            except KestrelError:
                with self._lock:
                    self._outgoing.pop(vm_id, None)
                raise
            hv.registry.set(vm_id, dom.name(), VmStatus.MIGRATING_FROM)
        threading.Thread(target=self._migrate, args=(record, dom, dest_xml, persist_xml),
                         daemon=True, name=f"migrate-{vm_id[:8]}").start()
        return record.report()

    def _destination_xml(self, dom: libvirt.virDomain, paths: dict[str, str]
                         ) -> tuple[str, str | None]:
        """Our migratable live (and persistent) XML with the destination's paths."""
        vm_id = dom.UUIDString()
        rename = {}
        for value, dest_path in paths.items():
            if not isinstance(dest_path, str) or not placeholders.is_placeholder(value):
                raise InvalidSpec("paths", f"{value!r}: not a placeholder and a path")
            if placeholders.parse(value).kind == "lun":
                continue  # a registered LUN has the engine's one path on every host
            ours = placeholders.resolve(value, self.hv.config.paths,
                                        self.hv.config.storage_domains)
            if ours != dest_path:
                rename[ours] = dest_path
        flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
        try:
            live = dom.XMLDesc(flags)
            persistent = (dom.XMLDesc(flags | libvirt.VIR_DOMAIN_XML_INACTIVE)
                          if dom.isPersistent() else None)
        except libvirt.libvirtError as exc:
            raise LibvirtError(f"libvirt could not read the XML of VM {vm_id}: "
                               f"{exc.get_error_message()}", vm_id=vm_id) from None
        return _rename_paths(live, rename), (
            _rename_paths(persistent, rename) if persistent else None)

    def _migrate(self, record: Outgoing, dom: libvirt.virDomain, dest_xml: str,
                 persist_xml: str | None) -> None:
        vm_id = record.vm_id
        policy = convergence.Convergence(record.policy)
        params: dict = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: dest_xml}
        if persist_xml:
            params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = persist_xml
        if record.bandwidth_mibps:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = record.bandwidth_mibps
        flags = migrate_flags(record.policy, record.tls)
        done = threading.Event()
        sampler = threading.Thread(target=self._sample, args=(record, dom, policy, done),
                                   daemon=True, name=f"migrate-progress-{vm_id[:8]}")
        try:
            dom.migrateSetMaxDowntime(policy.downtime_ms, 0)
            record.downtime_limit_ms = policy.downtime_ms
            sampler.start()
            dom.migrateToURI3(record.destination_uri, params, flags)
        except libvirt.libvirtError as exc:
            done.set()
            self._failed(record, dom, exc.get_error_message())
            return
        done.set()
        self._succeeded(record, dom)

    def _sample(self, record: Outgoing, dom: libvirt.virDomain,
                policy: convergence.Convergence, done: threading.Event) -> None:
        while not done.wait(SAMPLE_INTERVAL):
            try:
                stats = dom.jobStats()
            except libvirt.libvirtError:
                continue
            if stats.get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE:
                continue
            record.progress = _progress(stats, policy.downtime_ms)
            action = policy.observe(int(stats.get("memory_iteration", 0)),
                                    int(stats.get("data_remaining", 0)))
            if action is not None:
                self._apply(record, dom, action)

    def _apply(self, record: Outgoing, dom: libvirt.virDomain,
               action: convergence.Action) -> None:
        record.steps.append({"action": action.kind, "downtime_ms": action.downtime_ms,
                             "reason": action.reason})
        log.info("migration of VM %s: %s %s (%s)", record.vm_id, action.kind,
                 action.downtime_ms or "", action.reason)
        try:
            if action.kind == "downtime":
                dom.migrateSetMaxDowntime(action.downtime_ms, 0)
                record.downtime_limit_ms = action.downtime_ms
            elif action.kind == "postcopy":
                dom.migrateStartPostCopy(0)
                record.postcopy = True
            elif action.kind == "abort":
                record.error = f"the migration did not converge: {action.reason}"
                dom.abortJob()
        except libvirt.libvirtError as exc:
            log.warning("migration of VM %s: %s failed: %s", record.vm_id, action.kind,
                        exc.get_error_message())

    def _succeeded(self, record: Outgoing, dom: libvirt.virDomain) -> None:
        hv = self.hv
        try:
            completed = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        except libvirt.libvirtError as exc:
            log.warning("VM %s migrated; its completed job statistics are not readable: %s",
                        record.vm_id, exc.get_error_message())
            completed = {}
        if "downtime" in completed:
            record.downtime_ms = int(completed["downtime"])
        if completed:
            record.progress = _progress(completed, record.downtime_limit_ms)
        warnings = hv.run_after_hook("after_vm_migrate_source", dom)
        with hv.vm_lock(record.vm_id):
            with contextlib.suppress(libvirt.libvirtError):
                if not dom.isActive() and dom.isPersistent():
                    undefine(dom)
            hv.registry.remove(record.vm_id)
        hv.remove_payload(record.vm_id)
        record.error = "; ".join(warnings.get("hook_warnings", [])) or None
        record.finished = time.monotonic()
        record.status = "succeeded"
        log.info("VM %s migrated to %s in %.1f s, downtime %s ms", record.vm_id,
                 record.destination_uri, record.finished - record.started, record.downtime_ms)

    def _failed(self, record: Outgoing, dom: libvirt.virDomain, message: str) -> None:
        """The migration failed: make sure the guest runs here again."""
        hv = self.hv
        try:
            state, reason = dom.state()
            # libvirt resumes the source itself after a pre-copy failure; this covers
            # a switchover that paused it and then lost the destination.
            if state == libvirt.VIR_DOMAIN_PAUSED and not record.postcopy and \
                    reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
                dom.resume()
            hv.registry.set(record.vm_id, dom.name(), *libvirt_status(dom))
        except libvirt.libvirtError as exc:
            log.error("VM %s: after the failed migration the source domain is not "
                      "readable: %s", record.vm_id, exc.get_error_message())
        # An error already recorded is the convergence policy's abort: that is the cause
        # even when the engine, seeing the destination drop its copy, asked to cancel too.
        gave_up = record.error is not None
        record.error = record.error or message
        record.finished = time.monotonic()
        record.status = "cancelled" if record.cancel_requested and not gave_up else "failed"
        log.warning("migration of VM %s to %s %s: %s", record.vm_id, record.destination_uri,
                    record.status, record.error)

    # -- both ------------------------------------------------------------------------

    def report(self, vm_id: str) -> dict:
        with self._lock:
            record = self._outgoing.get(vm_id)
            incoming = vm_id in self._incoming
        if record is not None:
            return record.report()
        if incoming:
            return {"id": vm_id, "role": "destination", "status": "running"}
        raise NotFound("migration of VM", vm_id)

    def cancel(self, vm_id: str) -> dict:
        """Source: abort the job (the guest stays here). Destination: drop the incoming copy."""
        with self._lock:
            record = self._outgoing.get(vm_id)
        if record is not None and record.status == "running":
            record.cancel_requested = True
            dom = self.hv.lookup(vm_id)
            with contextlib.suppress(libvirt.libvirtError):
                dom.abortJob()
            return record.report()
        return self._cancel_incoming(vm_id)

    def _cancel_incoming(self, vm_id: str) -> dict:
        hv = self.hv
        with self._lock:
            pending = vm_id in self._incoming
        record = hv.registry.get(vm_id)
        if not pending and (record is None or record.status != VmStatus.MIGRATING_TO):
            raise NotFound("migration of VM", vm_id)
        dom = hv.find(vm_id)
        if dom is not None and is_running(dom) and not _migrating_in(dom):
            raise Conflict(f"VM {vm_id} already runs on this host: its migration completed",
                           vm_id=vm_id)
        if dom is not None:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isPersistent():
                    undefine(dom)
        self._forget_incoming(vm_id)
        hv.remove_payload(vm_id)
        return {"id": vm_id, "role": "destination", "status": "cancelled"}

    def recover(self, conn: libvirt.virConnect) -> None:
        """After an agent restart: a migration job nobody drives any more is aborted (the
        guest stays on the source), and an incoming VM is known as MigratingTo again."""
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                stats = dom.jobStats()
                if stats.get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE:
                    continue
                operation = stats.get("operation")
                vm_id = dom.UUIDString()
                if operation == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT:
                    with self._lock:
                        driven = vm_id in self._outgoing
                    if not driven:
                        log.warning("VM %s: aborting an outgoing migration no agent drives "
                                    "(the agent restarted)", vm_id)
                        dom.abortJob()
                elif operation == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN:
                    with self._lock:
                        self._incoming.setdefault(vm_id, time.monotonic())
                    self.hv.registry.set(vm_id, dom.name(), VmStatus.MIGRATING_TO)
            except libvirt.libvirtError:
                continue


class IncomingStart(StartSequence):
    """Start mode "incoming": the host is prepared and the VM registered MigratingTo; the
    source's libvirt defines and starts the domain (VIR_MIGRATE_PERSIST_DEST).

    The before_vm_migrate_destination hooks only judge (a failing one refuses the
    migration): the domain's XML comes from the source. The after hook runs when
    the VM resumes here (Migrations.on_event).
    """

    before_hook = "before_vm_migrate_destination"

    def __init__(self, migrations: Migrations, engine_xml: str, host: domxml.HostDomain):
        super().__init__(migrations.hv, host)
        self.migrations = migrations
        self.engine_xml = engine_xml  # with placeholders: the source renames its paths by them

    def already_running(self, dom: libvirt.virDomain) -> dict:
        raise Conflict(f"VM {self.host.uuid} already runs on this host; it cannot migrate "
                       "here", vm_id=self.host.uuid)

    def claim(self) -> None:
        self.migrations.claim_incoming(self.host.uuid)

    def release(self) -> None:
        self.migrations.release_incoming(self.host.uuid)

    def bring_up(self, xml: str, existing: libvirt.virDomain | None) -> None:
        return None  # the source's libvirt calls ours when it starts the migration

    def started(self, dom: None) -> dict:
        hv, host = self.hv, self.host
        hv.registry.set(host.uuid, host.name, VmStatus.MIGRATING_TO)
        return {"id": host.uuid, "name": host.name, "status": VmStatus.MIGRATING_TO.value,
                "started": False, "xml": host.xml, "paths": _placeholder_paths(
                    self.engine_xml, hv.config.paths, hv.config.storage_domains)}


def migrate_flags(policy: str, tls: bool) -> int:
    """libvirt flags of an outgoing migration. VIR_MIGRATE_TLS makes QEMU's own stream
    use TLS (qemu.conf's migrate_tls_x509_cert_dir on both hosts); libvirt refuses to
    start rather than silently migrate in clear when either side lacks it."""
    return (_FLAGS | (libvirt.VIR_MIGRATE_POSTCOPY if policy == "post_copy" else 0)
            | (libvirt.VIR_MIGRATE_TLS if tls else 0))


def _progress(stats: dict, downtime_limit_ms: int) -> dict:
    return {"data_processed_mib": round(stats.get("data_processed", 0) / _MiB, 1),
            "data_remaining_mib": round(stats.get("data_remaining", 0) / _MiB, 1),
            "data_total_mib": round(stats.get("data_total", 0) / _MiB, 1),
            "iteration": int(stats.get("memory_iteration", 0)),
            "dirty_rate_pages_s": int(stats.get("memory_dirty_rate", 0)),
            "bandwidth_mibps": round(stats.get("memory_bps", 0) / _MiB, 1),
            "elapsed_ms": int(stats.get("time_elapsed", 0)),
            "downtime_limit_ms": downtime_limit_ms}


def _placeholder_paths(xml: str, roots: dict[str, str], domains: dict[str, str]
                       ) -> dict[str, str]:
    """Every placeholder of the engine's XML -> this host's path for it."""
    root = domxml.parse_domain(xml)
    luns = metadata.read(root).luns
    found = {}
    for element in root.iter():
        for value in list(element.attrib.values()) + [(element.text or "").strip()]:
            if value and placeholders.is_placeholder(value):
                found[value] = placeholders.resolve(value, roots, domains, luns)
    return found


def _rename_paths(xml: str, rename: dict[str, str]) -> str:
    if not rename:
        return xml
    root = ET.fromstring(xml)
    for element in root.iter():
        for attr, value in element.attrib.items():
            if value in rename:
                element.set(attr, rename[value])
        if element.text and element.text.strip() in rename:
            element.text = rename[element.text.strip()]
    return ET.tostring(root, encoding="unicode")


def _migrating_in(dom: libvirt.virDomain) -> bool:
    try:
        stats = dom.jobStats()
    except libvirt.libvirtError:
        return False
    return stats.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN
