"""Live snapshots of a running VM, and the live chains the engine reconciles with.

The engine owns every chain: it names the new top volume of each disk (a qcow2
overlay on the disk's current top, in the same image) and sends the
``<kestrel:vm>`` metadata for the chain after the snapshot. Here:

1. the VM must run here (Up or Paused: a migrating or saving VM is refused) and
   each disk's live source must be the top the engine names ("chain changed"
   otherwise: the engine's view is stale);
2. each overlay is made by us (``qemu-img create -b ../<image>/<volume> -F fmt``,
   the relative backing name of every chain) and never over an existing file;
3. one ``virDomainSnapshotCreateXML`` switches every disk at once (ATOMIC) onto
   the overlays we made (REUSE_EXT), with no libvirt snapshot metadata
   (NO_METADATA: the engine's database is the record; libvirt 9.0 cannot revert
   external snapshots anyway). Disk-only, quiesced through the guest agent
   when it answers (else retried without: ``quiesced`` false); or with the
   guest's memory saved to an external file, the VM paused meanwhile, so memory
   and disks match exactly (no quiesce then: the memory would hold frozen
   filesystems);
4. the new metadata is set on the live domain, so a later migration or chain
   check reads the new chain.

A failure (a full storage domain, say) removes the overlays and the memory file
made here; ATOMIC leaves the VM on its old chain, which is checked and said.
"""

from __future__ import annotations

import contextlib
import logging
import os
import xml.etree.ElementTree as ET

import libvirt

from engine_lib.agent import volumes
from engine_lib.agent.domains import libvirt_errors
from engine_lib.agent.snapshot_request import Overlay, SnapshotRequest
from engine_lib.agent.states import VmStatus
from engine_lib.agent.volumes import VolumeLocation
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import Conflict, InvalidSpec, LibvirtError

log = logging.getLogger("kestrel.agent.snapshots")

_FLAGS = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
          | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
          | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
_SNAPSHOT_STATUSES = (VmStatus.UP, VmStatus.PAUSED)
_BLOCK_JOB_TYPES = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL: "pull",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY: "copy",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT: "commit",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT: "active_commit",
    getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP", 5): "backup",
}


def create(hv, vm_id: str, request: SnapshotRequest) -> dict:
    """Take the snapshot (steps 1-4 above) of the VM ``vm_id`` running here.

    ``hv`` is the Hypervisor (engine_lib.agent.vms), used through its public methods.
    """
    domains = hv.config.storage_domains
    with hv.vm_lock(vm_id):
        dom = hv.lookup(vm_id)
        record = hv.registry.get(vm_id)
        status = record.status if record is not None else None
        if status not in _SNAPSHOT_STATUSES or not dom.isActive():
            shown = status.value if status is not None else "not running"
            raise Conflict(f"VM {vm_id} is {shown}: a live snapshot needs it Up or Paused "
                           "on this host", vm_id=vm_id, status=shown)
        with libvirt_errors("read the XML of", vm_id):
            live = ET.fromstring(dom.XMLDesc(0))
        targets = _check_tops(live, request.disks, domains, vm_id)
        memory_path = _check_memory(request.memory, domains)
        made: list[VolumeLocation] = []
        try:
            for disk in request.disks:
                volumes.create_overlay(disk.volume, disk.parent, disk.parent_format,
                                       disk.size_mib, domains)
                made.append(disk.volume)
            if request.memory is not None:
                request.memory.make_parent(domains)
            quiesced = _snapshot(dom, request, live, targets, memory_path, domains)
        except BaseException as exc:
            _remove(made, request.memory, domains)
            if isinstance(exc, libvirt.libvirtError):
                raise _failure(dom, vm_id, request, targets, domains, exc) from None
            raise
        updated = _set_metadata(dom, vm_id, request.metadata_xml)
    log.info("VM %s: snapshot %s taken (%d disks, memory %s, quiesced %s)", vm_id,
             request.snapshot, len(request.disks), memory_path is not None, quiesced)
    return {"quiesced": quiesced, "memory": memory_path is not None,
            "disks": [{"alias": d.alias, "volume": d.volume.volume} for d in request.disks],
            **({} if updated else {"warnings": ["the domain's metadata still lists the "
                                                "old chain"]})}


def _check_tops(live: ET.Element, disks: list[Overlay], domains: dict[str, str],
                vm_id: str) -> dict[str, str]:
    """Each alias's target dev, after checking its live source is the named parent."""
    by_alias = {}
    for element in live.iterfind("devices/disk"):
        alias = element.find("alias")
        if alias is not None:
            by_alias[alias.get("name", "")] = element
    targets = {}
    for index, disk in enumerate(disks):
        element = by_alias.get(disk.alias)
        if element is None:
            raise InvalidSpec(f"disks[{index}].alias", f"VM {vm_id} has no disk with alias "
                                                       f"'{disk.alias}'")
        source = element.find("source")
        current = (source.get("file") or "") if source is not None else ""
        expected = disk.parent.checked_path(domains)
        if not current or os.path.realpath(current) != os.path.realpath(expected):
            raise Conflict(f"disk {disk.alias} of VM {vm_id}: chain changed, its top is "
                           f"{current or 'nothing'}, not {expected}", vm_id=vm_id,
                           alias=disk.alias, top=current)
        target = element.find("target")
        targets[disk.alias] = target.get("dev", "") if target is not None else ""
    return targets


def _check_memory(memory: VolumeLocation | None, domains: dict[str, str]) -> str | None:
    if memory is None:
        return None
    path = memory.checked_path(domains)  # a link there (or on the way) is refused
    if memory.exists(domains):
        raise Conflict(f"memory volume {path} already exists; it may hold another saved "
                       "state, so it is not overwritten", path=path)
    return path


def snapshot_xml(request: SnapshotRequest, live: ET.Element, targets: dict[str, str],
                 memory_path: str | None, domains: dict[str, str]) -> str:
    """The <domainsnapshot>: the named disks external onto our overlays, every other disk
    (cdroms, LUNs, disks the engine left out) not snapshotted."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = request.snapshot
    if memory_path is None:
        ET.SubElement(root, "memory", snapshot="no")
    else:
        ET.SubElement(root, "memory", snapshot="external", file=memory_path)
    disks = ET.SubElement(root, "disks")
    chosen = {targets[d.alias]: d for d in request.disks}
    for element in live.iterfind("devices/disk"):
        target = element.find("target")
        dev = target.get("dev", "") if target is not None else ""
        if not dev:
            continue
        overlay = chosen.get(dev)
        if overlay is None:
            ET.SubElement(disks, "disk", name=dev, snapshot="no")
            continue
        node = ET.SubElement(disks, "disk", name=dev, snapshot="external", type="file")
        ET.SubElement(node, "driver", type="qcow2")
        ET.SubElement(node, "source", file=overlay.volume.checked_path(domains))
    return ET.tostring(root, encoding="unicode")


def _snapshot(dom: libvirt.virDomain, request: SnapshotRequest, live: ET.Element,
              targets: dict[str, str], memory_path: str | None,
              domains: dict[str, str]) -> bool:
    """virDomainSnapshotCreateXML; whether the guest's filesystems were frozen for it."""
    xml = snapshot_xml(request, live, targets, memory_path, domains)
    flags = _FLAGS if memory_path is not None else \
        _FLAGS | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    if request.quiesce and memory_path is None:
        try:
            dom.snapshotCreateXML(xml, flags | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE)
            return True
        except libvirt.libvirtError as exc:
            # No guest agent, or it cannot freeze: crash-consistent is what is left.
            log.info("VM %s: quiesced snapshot refused (%s); taking it unquiesced",
                     dom.UUIDString(), exc.get_error_message())
    dom.snapshotCreateXML(xml, flags)
    return False


def _failure(dom: libvirt.virDomain, vm_id: str, request: SnapshotRequest,
             targets: dict[str, str], domains: dict[str, str],
             exc: libvirt.libvirtError) -> LibvirtError:
    """The error of a failed snapshot: libvirt's reason, the storage domains involved, and
    whether the VM is on its old chain (ATOMIC promises it; checked, not assumed)."""
    where = sorted({d.volume.domain for d in request.disks}
                   | ({request.memory.domain} if request.memory else set()))
    moved = []
    with contextlib.suppress(libvirt.libvirtError):
        live = ET.fromstring(dom.XMLDesc(0))
        for disk in request.disks:
            current = _source_of(live, targets[disk.alias])
            if os.path.realpath(current) != os.path.realpath(disk.parent.path(domains)):
                moved.append(disk.alias)
    state = (f"disks {', '.join(moved)} are NOT on their previous top" if moved
             else "the VM runs on its previous chain")
    return LibvirtError(f"libvirt could not snapshot VM {vm_id} on storage domain "
                        f"{', '.join(repr(w) for w in where)}: {exc.get_error_message()}; "
                        f"{state}", vm_id=vm_id, libvirt_code=exc.get_error_code(),
                        storage_domains=where, old_chain=not moved)


def _source_of(live: ET.Element, dev: str) -> str:
    for element in live.iterfind("devices/disk"):
        target, source = element.find("target"), element.find("source")
        if target is not None and target.get("dev") == dev and source is not None:
            return source.get("file", "")
    return ""


def _remove(made: list[VolumeLocation], memory: VolumeLocation | None,
            domains: dict[str, str]) -> None:
    for location in [*made, *([memory] if memory is not None else [])]:
        try:
            location.unlink(domains)
        except OSError as exc:
            log.warning("could not remove %s after a failed snapshot: %s",
                        location.path(domains), exc)


def _set_metadata(dom: libvirt.virDomain, vm_id: str, text: str) -> bool:
    """The engine's <kestrel:vm> for the new chain on the live (and persistent) domain."""
    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isPersistent():
            flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
    try:
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, bare(text), metadata.PREFIX,
                        metadata.NAMESPACE, flags)
    except libvirt.libvirtError as exc:
        # The snapshot stands (the guest writes to the overlays now): the engine learns
        # the chain from GET chains; the warning says why the metadata lags.
        log.warning("VM %s: snapshot taken but its metadata not updated: %s", vm_id,
                    exc.get_error_message())
        return False
    return True


def bare(text: str) -> str:
    """The element without its namespace: libvirt puts it there itself (key and URI) and
    refuses an element that declares one ("failed to create a new XML namespace")."""
    root = ET.fromstring(text)
    for element in root.iter():
        element.tag = element.tag.rsplit("}", 1)[-1]
    return ET.tostring(root, encoding="unicode")


# -- GET /vms/{id}/chains ------------------------------------------------------------------


def chains(hv, vm_id: str) -> dict:
    """Each disk's live chain, top first as "<image>/<volume>", and its block job."""
    dom = hv.lookup(vm_id)
    with libvirt_errors("read the XML of", vm_id):
        live = ET.fromstring(dom.XMLDesc(0))
    roots = hv.config.storage_domains
    disks = []
    for element in live.iterfind("devices/disk"):
        alias_node, target = element.find("alias"), element.find("target")
        source = element.find("source")
        if source is None or not source.get("file") or target is None:
            continue
        chain, node = [], element
        while node is not None and node.find("source") is not None:
            chain.append(_volume_name(node.find("source").get("file", ""), roots))
            node = node.find("backingStore")
        dev = target.get("dev", "")
        disks.append({"alias": alias_node.get("name", "") if alias_node is not None else "",
                      "target": dev, "chain": chain,
                      "block_job": _block_job(dom, element, dev)})
    return {"disks": disks}


def _volume_name(path: str, roots: dict[str, str]) -> str:
    """"<image>/<volume>" of a file on a storage domain; any other path as it is."""
    for root in roots.values():
        prefix = root.rstrip("/") + "/"
        if path.startswith(prefix) and path[len(prefix):].count("/") == 1:
            return path[len(prefix):]
    return path


def _block_job(dom: libvirt.virDomain, element: ET.Element, dev: str) -> dict | None:
    try:
        info = dom.blockJobInfo(dev, 0)
    except libvirt.libvirtError:
        return None
    if not info:
        return None
    mirror = element.find("mirror")
    ready = mirror.get("ready") == "yes" if mirror is not None else \
        info.get("end", 0) > 0 and info.get("cur") == info.get("end")
    return {"type": _BLOCK_JOB_TYPES.get(info.get("type", 0), str(info.get("type"))),
            "cur": info.get("cur", 0), "end": info.get("end", 0), "ready": bool(ready)}
