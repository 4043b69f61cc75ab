"""Memory balloon policy: what MoM does next to VDSM, for clusters with ballooning on.

Every ``[ballooning] interval`` seconds the agent compares the host's free
memory (libvirt's node memory stats: free + buffers + page cache, as MoM counts
it, of the total) with two thresholds. Under ``low_free_percent`` it shrinks the
balloon target of each eligible VM by ``step_percent`` of the VM's memory, never below the VM's
guaranteed memory; over ``high_free_percent`` it grows them back by the same
step, up to the full memory; in between it leaves them where they are (the gap
keeps the balloons from flapping).

Eligible: a VM this agent knows, Up, whose domain metadata carries
``<kestrel:balloon ballooning='on'>``. The engine writes that flag when the
VM's cluster has ballooning on and the VM has a balloon, so the decision needs
no engine round trip and survives agent restarts. A VM without a guarantee
(guarantee_mib 0) is never shrunk: as in oVirt, unset guaranteed memory means
all of it.

:func:`decide` is the policy, pure; :class:`BalloonPolicy` gathers its input
from libvirt and applies its output with ``setMemoryFlags(..., AFFECT_LIVE)``.
"""

from __future__ import annotations

import logging
import math
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import libvirt

from engine_lib.agent.config import BallooningConfig
from engine_lib.agent.states import VmStatus
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import KestrelError

log = logging.getLogger("kestrel.agent.ballooning")

SHRINKING, GROWING, IDLE = "shrinking", "growing", "idle"
_BALLOON = f"{{{metadata.NAMESPACE}}}balloon"


@dataclass(frozen=True)
class BalloonedVm:
    id: str
    memory_kib: int      # the VM's full memory: the balloon fully deflated
    target_kib: int      # the balloon target it has now
    guarantee_kib: int   # 0: none set, the VM keeps all its memory


@dataclass(frozen=True)
class Decision:
    state: str
    free_percent: float
    # VM id -> new balloon target (KiB), only for VMs whose target changes.
    targets: dict[str, int] = field(default_factory=dict)


def decide(free_kib: int, total_kib: int, vms: list[BalloonedVm],
           settings: BallooningConfig) -> Decision:
    """The balloon targets to set for this host's memory situation."""
    free_percent = 100.0 * free_kib / total_kib if total_kib > 0 else 100.0
    if free_percent < settings.low_free_percent:
        state = SHRINKING
    elif free_percent > settings.high_free_percent:
        state = GROWING
    else:
        return Decision(IDLE, round(free_percent, 2))
    targets = {}
    for vm in vms:
        step = max(1, math.ceil(vm.memory_kib * settings.step_percent / 100))
        if state == SHRINKING:
            floor = min(vm.guarantee_kib, vm.memory_kib) if vm.guarantee_kib else vm.memory_kib
            new = max(floor, vm.target_kib - step)
        else:
            new = min(vm.memory_kib, vm.target_kib + step)
        if new != vm.target_kib:
            targets[vm.id] = new
    return Decision(state, round(free_percent, 2), targets)


def balloon_settings(vm_metadata_xml: str) -> tuple[bool, int]:
    """(ballooning allowed, guarantee MiB) from our <kestrel:vm> metadata element.

    ``virDomainGetMetadata`` returns the element without its namespace; the
    domain XML has it: both are read."""
    node = next((child for child in ET.fromstring(vm_metadata_xml)
                 if child.tag in (_BALLOON, "balloon")), None)
    if node is None:
        return False, 0
    try:
        guarantee = int(node.get("guarantee_mib", "0"))
    except ValueError:
        guarantee = 0
    return node.get("ballooning") == "on", max(0, guarantee)


def host_memory_kib(conn) -> tuple[int, int]:
    """(free, total) KiB, counting buffers and page cache as free as MoM does: a host
    whose cache filled its memory is not short of it."""
    try:
        memory = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
        return (memory["free"] + memory.get("buffers", 0) + memory.get("cached", 0),
                memory["total"])
    except (libvirt.libvirtError, KeyError):  # drivers without node memory stats
        return conn.getFreeMemory() // 1024, conn.getInfo()[1] * 1024


class BalloonPolicy:
    """Runs :func:`decide` on this host's VMs every interval, in a daemon thread."""

    def __init__(self, hypervisor, settings: BallooningConfig):
        self._hypervisor = hypervisor
        self.settings = settings
        self._lock = threading.Lock()
        self._targets: dict[str, int] = {}  # what we set, per VM id (KiB)
        self._last: dict = {"state": IDLE, "vms": 0, "adjusted": 0, "free_percent": None}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ballooning", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def report(self) -> dict:
        """The last decision, for the host's stats."""
        with self._lock:
            return dict(self._last)

    def target_kib(self, vm_id: str) -> int | None:
        """The balloon target this policy set for the VM, None if it never touched it."""
        with self._lock:
            return self._targets.get(vm_id)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.interval_s):
            try:
                self.tick()
            except (KestrelError, libvirt.libvirtError) as exc:
                log.warning("balloon policy skipped a round: %s",
                            getattr(exc, "message", None) or exc)
            except Exception:
                log.exception("balloon policy round failed")

    def tick(self) -> Decision:
        conn = self._hypervisor.connection()
        free_kib, total_kib = host_memory_kib(conn)
        domains = {}
        vms = []
        for record in self._hypervisor.registry.all():
            if record.status != VmStatus.UP:
                continue
            found = self._eligible(conn, record.id)
            if found is not None:
                domains[record.id] = found[0]
                vms.append(found[1])
        decision = decide(free_kib, total_kib, vms, self.settings)
        adjusted = 0
        for vm_id, target in decision.targets.items():
            try:
                domains[vm_id].setMemoryFlags(target, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:  # stopped or migrated meanwhile
                log.info("VM %s: balloon target %d KiB not set: %s", vm_id, target,
                         exc.get_error_message())
                continue
            adjusted += 1
            with self._lock:
                self._targets[vm_id] = target
        if decision.targets:
            log.info("free host memory %.1f%%: %s %d VM balloon(s)", decision.free_percent,
                     decision.state, adjusted)
        with self._lock:
            for vm_id in set(self._targets) - {vm.id for vm in vms}:
                del self._targets[vm_id]  # gone, or no longer ours to balloon
            self._last = {"state": decision.state, "vms": len(vms), "adjusted": adjusted,
                          "free_percent": decision.free_percent}
        return decision

    def _eligible(self, conn, vm_id: str) -> tuple[libvirt.virDomain, BalloonedVm] | None:
        try:
            dom = conn.lookupByUUIDString(vm_id)
            allowed, guarantee_mib = balloon_settings(dom.metadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.NAMESPACE, 0))
            if not allowed:
                return None
            state = dom.state()[0]
            memory_kib = dom.maxMemory()
            current_kib = dom.info()[2]
        except libvirt.libvirtError:
            return None  # gone, or without our metadata: not ours to balloon
        if state != libvirt.VIR_DOMAIN_RUNNING:
            return None
        with self._lock:
            target = self._targets.get(vm_id, current_kib)
        return dom, BalloonedVm(vm_id, memory_kib, target, guarantee_mib * 1024)
