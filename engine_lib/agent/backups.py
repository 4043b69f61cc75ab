"""Push-mode backups of a running VM through libvirt's backup API, as agent jobs.

The engine keeps the checkpoints (their XML); libvirt forgets them whenever a
transient domain stops, while the dirty bitmaps stay in the qcow2 files. So a
backup first REDEFINES the engine's checkpoints libvirt lacks, oldest first.
The agent then creates each target qcow2 on its storage domain (an
incremental's backed by the disk's previous backup file, named relative, so
the backup files form a chain that reads as the disk did), and starts
virDomainBackupBegin with REUSE_EXTERNAL and the new checkpoint; the job
follows libvirt's job statistics until the backup job ends.

When libvirt refuses the incremental (a checkpoint it cannot redefine, a
bitmap missing or inconsistent after QEMU was killed), the agent takes a full
backup instead and says why (``fell_back``). A backup that fails leaves
nothing: the target files it made are removed and its checkpoint is deleted
(libvirt merges the checkpoint's bitmap into its parent, so the next
incremental still covers every change). A backup that succeeds deletes every
older checkpoint with its bitmap: the engine builds each incremental on the
newest, and old bitmaps would otherwise pile up in the disk for ever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

import libvirt

from engine_lib.agent import volumes
from engine_lib.agent.backup_request import BackupDisk, BackupRequest
from engine_lib.agent.domains import is_active, libvirt_errors
from engine_lib.agent.jobs import Job, Jobs
from engine_lib.protocol.errors import Conflict, KestrelError, LibvirtError, NotFound
from engine_lib.protocol.statuses import VmStatus

log = logging.getLogger("kestrel.agent.backups")

MiB = 1024 * 1024
# libvirt's job statistics are read this often while the backup job runs, first more often
# (a small incremental ends within milliseconds); each read is one QMP query, so a job's
# end is seen within 50 ms at little cost.
FIRST_POLL, POLL = 0.01, 0.05
_BUSY = (VmStatus.MIGRATING_FROM, VmStatus.MIGRATING_TO, VmStatus.SAVING_STATE,
         VmStatus.RESTORING_STATE, VmStatus.WAIT_FOR_LAUNCH)


def start(hv, jobs: Jobs, vm_id: str, request: BackupRequest) -> dict:
    """Check the VM and its disks, then run the backup as a job: {job}.

    ``hv`` is the Hypervisor (engine_lib.agent.vms), used through its public methods.
    """
    dom = _running(hv, vm_id)
    sizes = _disk_sizes(dom, vm_id, request.disks)
    # One backup per VM at a time (libvirt would refuse the second one less clearly).
    job = jobs.create("backup", f"backup/{vm_id}")
    job.phase = "preparing"
    jobs.run(job, lambda j: _run(hv, j, dom, request, sizes))
    return {"job": job.id}


def checkpoints(hv, vm_id: str) -> dict:
    """The checkpoints libvirt has for the VM here, parents before children."""
    dom = hv.lookup(vm_id)
    with libvirt_errors("list the checkpoints of", vm_id):
        names = [c.getName() for c in dom.listAllCheckpoints(
            libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL)]
    return {"checkpoints": names}


def delete_checkpoint(hv, vm_id: str, name: str) -> dict:
    """Delete one checkpoint; libvirt merges its bitmap into its parent's."""
    dom = hv.lookup(vm_id)
    try:
        checkpoint = dom.checkpointLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
            raise NotFound("checkpoint", name) from None
        raise
    with libvirt_errors(f"delete checkpoint '{name}' of", vm_id):
        checkpoint.delete(0)
    return {"checkpoint": name, "deleted": True}


def _running(hv, vm_id: str) -> libvirt.virDomain:
    dom = hv.lookup(vm_id)
    record = hv.registry.get(vm_id)
    if record is not None and record.status in _BUSY:
        raise Conflict(f"VM {vm_id} is {record.status.value}: back it up when it is Up",
                       vm_id=vm_id, status=record.status.value)
    if not is_active(dom):
        raise Conflict(f"VM {vm_id} is not running here: a stopped VM's backup is a "
                       "copy of its volumes (POST /volumes/copy)", vm_id=vm_id)
    return dom


def _disk_sizes(dom: libvirt.virDomain, vm_id: str,
                disks: tuple[BackupDisk, ...]) -> dict[str, int]:
    """Each requested disk's virtual size; Conflict unless it is a qcow2 disk of the VM
    (only qcow2 keeps the persistent dirty bitmaps incremental backups need)."""
    with libvirt_errors("read the live XML of", vm_id):
        root = ET.fromstring(dom.XMLDesc(0))
    found = {}
    for disk in root.findall("./devices/disk"):
        target = disk.find("target")
        if target is not None:
            found[target.get("dev")] = disk
    sizes = {}
    for index, disk in enumerate(disks):
        element = found.get(disk.target)
        if element is None:
            raise Conflict(f"VM {vm_id} has no disk '{disk.target}' (disks[{index}].target)",
                           vm_id=vm_id, field=f"disks[{index}].target")
        driver = element.find("driver")
        if element.get("device", "disk") != "disk" or driver is None \
                or driver.get("type") != "qcow2":
            raise Conflict(f"disk '{disk.target}' of VM {vm_id} is not a qcow2 disk "
                           f"(disks[{index}].target): it keeps no dirty bitmaps",
                           vm_id=vm_id, field=f"disks[{index}].target")
        with libvirt_errors(f"read the size of disk '{disk.target}' of", vm_id):
            sizes[disk.target] = dom.blockInfo(disk.target)[0]
    return sizes


def _run(hv, job: Job, dom: libvirt.virDomain, request: BackupRequest,
         sizes: dict[str, int]) -> dict:
    vm_id = dom.UUIDString()
    storage = hv.config.storage_domains
    job.phase = "redefining checkpoints"
    fell_back = _redefine(dom, request)
    incremental = request.incremental if not fell_back else ""
    job.phase = "creating targets"
    made = _create_targets(job, storage, request.disks, sizes, incremental)
    try:
        _begin(dom, request, incremental, storage)
    except LibvirtError as exc:
        if not incremental:
            raise
        # Refused: bitmaps missing or inconsistent. A full backup needs files of its own
        # (no backing), so the incremental's are replaced.
        fell_back = f"libvirt refused the incremental backup from checkpoint " \
                    f"'{incremental}': {exc.message}"
        for location in made:
            location.unlink(storage)
        incremental = ""
        made = _create_targets(job, storage, request.disks, sizes, incremental)
        _begin(dom, request, incremental, storage)
    if fell_back:
        log.warning("backup %s of VM %s is full: %s", request.backup, vm_id, fell_back)
    job.cleanups.append(lambda: _forget_checkpoint(dom, request.checkpoint))
    job.phase = "copying"
    copy_ms = _follow(dom, job, vm_id)
    job.phase = "pruning checkpoints"
    pruned = _prune(dom, request.checkpoint)
    # Read after pruning: libvirt took the deleted parent out of the new checkpoint's XML,
    # so the engine's copy redefines without it.
    with libvirt_errors("read the new checkpoint of", vm_id):
        xml = dom.checkpointLookupByName(request.checkpoint).getXMLDesc(
            libvirt.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN)
    return {"checkpoint_xml": xml, "fell_back": fell_back, "pruned": pruned,
            "copy_ms": copy_ms,
            "disks": [{"alias": disk.alias, "bytes": _allocated(disk.volume, storage),
                       "size_mib": -(-sizes[disk.target] // MiB)} for disk in request.disks]}


def _redefine(dom: libvirt.virDomain, request: BackupRequest) -> str:
    """Give libvirt back the engine's checkpoints it lacks (a full backup's too: so their
    bitmaps can be pruned after it); why an incremental is impossible, or ""."""
    with libvirt_errors("list the checkpoints of", dom.UUIDString()):
        known = {c.getName() for c in dom.listAllCheckpoints(0)}
    for name, xml in request.checkpoints:
        if name in known:
            continue
        try:
            dom.checkpointCreateXML(xml, libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE)
        except libvirt.libvirtError as exc:
            if request.incremental:
                return f"checkpoint '{name}' could not be redefined: " \
                       f"{exc.get_error_message()}"
            log.warning("checkpoint %s of VM %s could not be redefined: %s", name,
                        dom.UUIDString(), exc.get_error_message())
            continue
        known.add(name)
    if not request.incremental:
        return ""
    if request.incremental not in known:
        return f"checkpoint '{request.incremental}' is unknown here (not among the " \
               "checkpoints libvirt has or was given)"
    return ""


def _create_targets(job: Job, storage: dict[str, str], disks: tuple[BackupDisk, ...],
                    sizes: dict[str, int], incremental: str) -> list[volumes.VolumeLocation]:
    """Create every target file (refused if one exists: it may be another backup's);
    each one made is removed again if the job does not succeed."""
    made: list[volumes.VolumeLocation] = []
    for index, disk in enumerate(disks):
        if disk.volume.exists(storage):
            raise Conflict(f"backup volume {disk.volume.path(storage)} already exists "
                           f"(disks[{index}].target_volume); it is not overwritten",
                           field=f"disks[{index}].target_volume")
        size = str(sizes[disk.target])
        if incremental and disk.parent is not None:
            if not disk.parent.exists(storage):
                raise Conflict(f"the previous backup volume {disk.parent.path(storage)} "
                               f"is missing (disks[{index}].parent_volume)",
                               field=f"disks[{index}].parent_volume")
            args = ["-u", "-b", f"../{disk.parent.relpath}", "-F", "qcow2", size]
        else:
            args = [size]
        volumes.create_file(disk.volume, "qcow2", args, storage)
        location = disk.volume
        made.append(location)
        job.cleanups.append(lambda loc=location: loc.unlink(storage))  # type: ignore[misc]
    return made


def _begin(dom: libvirt.virDomain, request: BackupRequest, incremental: str,
           storage: dict[str, str]) -> None:
    wanted = {disk.target: disk for disk in request.disks}
    with libvirt_errors("read the live XML of", dom.UUIDString()):
        root = ET.fromstring(dom.XMLDesc(0))
    backup_disks, checkpoint_disks = [], []
    for element in root.findall("./devices/disk"):
        target = element.find("target")
        name = target.get("dev") if target is not None else None
        if not name:
            continue
        disk = wanted.get(name)
        if disk is None:
            backup_disks.append(f"<disk name={quoteattr(name)} backup='no'/>")
            if element.get("device", "disk") == "disk":
                checkpoint_disks.append(f"<disk name={quoteattr(name)} checkpoint='no'/>")
            continue
        path = disk.volume.checked_path(storage, must_exist=True)
        mode = "incremental" if incremental else "full"
        backup_disks.append(
            f"<disk name={quoteattr(name)} backup='yes' type='file' backupmode='{mode}'"
            + (f" incremental={quoteattr(incremental)}" if incremental else "")
            + f"><driver type='qcow2'/><target file={quoteattr(path)}/></disk>")
        checkpoint_disks.append(f"<disk name={quoteattr(name)} checkpoint='bitmap'/>")
    backup_xml = ("<domainbackup mode='push'>"
                  + (f"<incremental>{incremental}</incremental>" if incremental else "")
                  + f"<disks>{''.join(backup_disks)}</disks></domainbackup>")
    checkpoint_xml = (f"<domaincheckpoint><name>{request.checkpoint}</name>"
                      f"<disks>{''.join(checkpoint_disks)}</disks></domaincheckpoint>")
    with libvirt_errors("begin the backup of", dom.UUIDString()):
        dom.backupBegin(backup_xml, checkpoint_xml,
                        libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL)


def _follow(dom: libvirt.virDomain, job: Job, vm_id: str) -> int:
    """Report libvirt's progress until its backup job ends; abort it on request. The
    milliseconds libvirt's job took."""
    aborted, pause = False, FIRST_POLL
    while True:
        try:
            stats = dom.jobStats(0)
        except libvirt.libvirtError as exc:
            raise KestrelError(f"backup of VM {vm_id} failed: {exc.get_error_message()}",
                               vm_id=vm_id) from None
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            break
        if stats.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP:
            job.report(stats.get("data_processed", 0), stats.get("data_total"))
        if job.abort.is_set() and not aborted:
            with contextlib.suppress(libvirt.libvirtError):
                dom.abortJob()
            aborted = True
        job.abort.wait(pause)  # an abort is acted on at once
        pause = min(POLL, pause * 2)
    job.check()
    try:
        done = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError as exc:
        raise KestrelError(f"backup of VM {vm_id}: libvirt lost its result "
                           f"({exc.get_error_message()})", vm_id=vm_id) from None
    if done.get("type") != libvirt.VIR_DOMAIN_JOB_COMPLETED \
            or done.get("operation") != libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP:
        reason = done.get("errmsg") or "the backup job did not complete"
        raise KestrelError(f"backup of VM {vm_id} failed: {reason}", vm_id=vm_id)
    job.report(done.get("data_processed", job.done_bytes), done.get("data_total"))
    return int(done.get("time_elapsed", 0))


def _prune(dom: libvirt.virDomain, keep: str) -> list[str]:
    """Delete every checkpoint but ``keep``, oldest first, with its bitmap: the next
    incremental builds on ``keep`` alone, and a bitmap left in the qcow2 would cost space
    and a little of every write forever. One libvirt refuses stays, and is not listed."""
    with libvirt_errors("list the checkpoints of", dom.UUIDString()):
        older = [c for c in dom.listAllCheckpoints(libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL)
                 if c.getName() != keep]
    pruned = []
    for checkpoint in older:
        try:
            checkpoint.delete(0)
        except libvirt.libvirtError as exc:
            log.warning("checkpoint %s of VM %s was not pruned: %s", checkpoint.getName(),
                        dom.UUIDString(), exc.get_error_message())
            continue
        pruned.append(checkpoint.getName())
    return pruned


def _forget_checkpoint(dom: libvirt.virDomain, name: str) -> None:
    with contextlib.suppress(libvirt.libvirtError):  # the domain may be gone: so is it
        dom.checkpointLookupByName(name).delete(0)


def _allocated(location: volumes.VolumeLocation, storage: dict[str, str]) -> int:
    """Bytes the file takes on the storage domain (what a backup really cost)."""
    fd = location.open(storage)
    try:
        return os.fstat(fd).st_blocks * 512
    finally:
        os.close(fd)
