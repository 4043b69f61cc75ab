"""VM backups: restore points kept as qcow2 files on a storage domain, and restores.

A backup writes one file per disk (a ``volumes`` row, content_type ``backup``). A
running VM's incremental backup pushes only what changed since the VM's last
checkpoint (libvirt's backup API, agent POST /vms/{id}/backups) into a file whose
parent is the previous backup's file of that disk, so every restore point is a
chain read like any other. The engine keeps the checkpoints (``checkpoints``) and
hands them to the agent to redefine on a domain started again. A backup asked
incremental that cannot be falls back to full and says why (``fallback_reason``).
A stopped VM's backup is a flattened copy of each disk (POST /volumes/copy).

Removing a backup another one builds on commits the child's file into the removed
one's (POST /volumes/merge) and hands that file to the child: the restore points
that remain read the same data. Restoring copies a backup's chain (flattened)
into a new floating disk or the disks of a new VM made from the settings recorded
at backup time.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine_lib.domxml.render import render
from engine_lib.model import Backup, Checkpoint, DeviceType, Host, Snapshot, Vm, Volume, utcnow
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError, NotFound
from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.services import job_context, vm_config, vm_origin, vm_sources, volume_jobs
from engine_lib.services.common import attached_names, audit, find
from engine_lib.services.host_records import HostRef
from engine_lib.services.results import Outcome

MODES = ("incremental", "full")
# A VM in these states is between hosts or between memory and disk: nothing to back up.
_REFUSED = (VmStatus.MIGRATING_FROM, VmStatus.MIGRATING_TO, VmStatus.WAIT_FOR_LAUNCH,
            VmStatus.POWERING_UP, VmStatus.SAVING_STATE, VmStatus.RESTORING_STATE)
_RUNNING = (VmStatus.UP, VmStatus.PAUSED, VmStatus.POWERING_DOWN)
Progress = Callable[[dict], None]


def backup_dict(row: Backup) -> dict:
    return {"id": row.id, "vm": row.vm_name, "description": row.description, "mode": row.mode,
            "fallback_reason": row.fallback_reason, "checkpoint_id": row.checkpoint_id,
            "from_checkpoint_id": row.from_checkpoint_id, "status": row.status,
            "storage_domain": row.storage_domain, "error": row.error,
            "created_at": row.created_at.isoformat() if row.created_at else None,
            "finished_at": row.finished_at.isoformat() if row.finished_at else None,
            "bytes_written": row.bytes_written,
            "disks": [dict(d) for d in row.disks]}


def _agent_volume(volume: Volume) -> dict:
    return vm_sources.volume_dict(volume)


def _disks_of(vm: Vm) -> list:
    """The VM's disks a backup holds: those with a volume on a storage domain (LUNs and
    cdroms are not backed up)."""
    return [d for d in vm.devices_of(DeviceType.DISK)
            if "lun" not in d.spec and d.spec.get("volume_id")]


def _targets(vm: Vm) -> dict[str, str]:
    """Disk alias -> guest target (vda ...), as the VM's domain XML names them."""
    out = {}
    for disk in ET.fromstring(render(vm)).iter("disk"):
        alias, target = disk.find("alias"), disk.find("target")
        if alias is not None and target is not None:
            out[alias.get("name", "")] = target.get("dev", "")
    return out


def _last_base(session: Session, vm: Vm) -> tuple[Checkpoint | None, Backup | None]:
    """The VM's newest checkpoint and the backup that made it (None, None: no checkpoint)."""
    cp = session.scalars(select(Checkpoint).where(Checkpoint.vm_id == vm.id)
                         .order_by(Checkpoint.created_at.desc())).first()
    if cp is None:
        return None, None
    made = session.scalars(select(Backup).where(Backup.checkpoint_id == cp.id,
                                                Backup.status == "succeeded")).first()
    return cp, made


def _fallback(session: Session, vm: Vm, disks: list, domain: str, running: bool,
              ) -> tuple[str, Checkpoint | None, Backup | None]:
    """Why an incremental backup of ``vm`` must be full ("" when it need not), with the
    checkpoint and backup it builds on."""
    if not running:
        return f"VM is {vm.status}: a stopped VM's backup is a full copy", None, None
    cp, base = _last_base(session, vm)
    if cp is None:
        return f"VM '{vm.name}' has no checkpoint yet (no earlier backup of it running)", \
            None, None
    if base is None:
        return f"the backup that made checkpoint {cp.id} was removed", None, None
    if base.storage_domain != domain:
        return (f"the previous backup is on storage domain '{base.storage_domain}', not "
                f"'{domain}'"), None, None
    taken = {d["disk"]: d for d in cp.disks}
    files = {d["disk"]: d for d in base.disks}
    for device in disks:
        entry = taken.get(device.name)
        if entry is None or device.name not in files:
            return f"disk '{device.name}' is not in checkpoint {cp.id}", None, None
        if entry["volume_id"] != device.spec["volume_id"]:
            return (f"disk '{device.name}' changed chain since checkpoint {cp.id} (its top "
                    f"volume was {entry['volume_id']}, now {device.spec['volume_id']})"), \
                None, None
    return "", cp, base


def _checkpoints(session: Session, vm: Vm) -> list[dict]:
    """Every checkpoint the engine keeps of ``vm``, oldest first, as the agent redefines
    them: the newest to build on, any older one so the agent prunes its bitmap."""
    rows = session.scalars(select(Checkpoint).where(Checkpoint.vm_id == vm.id)
                           .order_by(Checkpoint.created_at, Checkpoint.id))
    return [{"id": cp.id, "xml": cp.xml} for cp in rows]


def _lock_free(session: Session, vm: Vm) -> None:
    """One snapshot or backup operation per VM at a time."""
    running = session.scalars(select(Backup).where(Backup.vm_id == vm.id,
                                                   Backup.status == "running")).first()
    if running is not None:
        raise Conflict(f"VM '{vm.name}' has backup {running.id} running; wait for it",
                       vm=vm.name, backup=running.id)
    locked = session.scalars(select(Snapshot).where(Snapshot.vm_id == vm.id,
                                                    Snapshot.status == "locked")).first()
    if locked is not None:
        raise Conflict(f"VM '{vm.name}' has snapshot {locked.id} locked by a "
                       f"{locked.operation or 'running'} operation; wait for it",
                       vm=vm.name, snapshot=locked.id)


class _Plan:
    """What one backup does, decided in one transaction."""

    def __init__(self) -> None:
        self.backup_id = ""
        self.vm_id = ""
        self.vm_name = ""
        self.running = False
        self.host: HostRef | None = None
        self.body: dict = {}
        self.copies: list[tuple[dict, dict]] = []  # stopped VM: (source, target)
        self.targets: list[dict] = []


def _plan(engine, vm_name: str, storage_domain: str, mode: str,
          description: str) -> _Plan:
    if mode not in MODES:
        raise InvalidSpec("mode", f"must be one of {', '.join(MODES)} (got {mode!r})")
    plan = _Plan()
    with engine.store.transaction() as session:
        vm = session.execute(select(Vm).where(Vm.name == vm_name).with_for_update()
                             ).scalar_one_or_none()
        if vm is None:
            raise InvalidSpec("vm_name", f"no VM named '{vm_name}'")
        if vm.status in _REFUSED:
            raise Conflict(f"VM '{vm.name}' is {vm.status}: back it up once it is Up or Down",
                           vm=vm.name, status=vm.status)
        running = vm.status in _RUNNING and vm.run_on_host is not None
        if not running and vm.status != VmStatus.DOWN:
            raise Conflict(f"VM '{vm.name}' is {vm.status}: back it up once it is Up or Down",
                           vm=vm.name, status=vm.status)
        _lock_free(session, vm)
        disks = _disks_of(vm)
        if not disks:
            raise Conflict(f"VM '{vm.name}' has no disk on a storage domain to back up",
                           vm=vm.name)
        for device in disks:
            if not device.volume_created:
                raise Conflict(f"disk '{device.name}' of VM '{vm.name}' has no data yet (its "
                               "volume is made at the VM's first start)", vm=vm.name)
        domain = storage_domain or disks[0].spec["storage_domain"]
        attached = attached_names(session, vm.cluster)
        if attached and domain not in attached:
            raise InvalidSpec("storage_domain", f"'{domain}' is not a storage domain "
                                                f"attached to cluster '{vm.cluster.name}' "
                                                f"(attached: {', '.join(sorted(attached))})")
        reason, cp, base = ("", None, None)
        if mode == "incremental":
            reason, cp, base = _fallback(session, vm, disks, domain, running)
        row = Backup(vm_id=vm.id, vm_name=vm.name, description=description,
                     mode="incremental" if base is not None else "full",
                     fallback_reason=reason, from_checkpoint_id=cp.id if cp else "",
                     checkpoint_id=str(uuid.uuid4()) if running else "",
                     status="running", storage_domain=domain, disks=[],
                     vm_config={**vm_sources.settings_of(vm), "cluster": vm.cluster.name,
                                "description": vm.description})
        session.add(row)
        session.flush()
        previous = {d["disk"]: session.get(Volume, d["volume_id"])
                    for d in (base.disks if base is not None else [])}
        targets = _targets(vm) if running else {}
        entries, body_disks = [], []
        for device in disks:
            parent = previous.get(device.name)
            target = Volume(id=str(uuid.uuid4()),
                            image_id=parent.image_id if parent else str(uuid.uuid4()),
                            storage_domain=domain, parent=parent, format="qcow2",
                            size_mib=device.spec["size_mib"], content_type="backup", name="",
                            description=f"backup {row.id} of disk '{device.name}' of VM "
                                        f"'{vm.name}'",
                            status="locked", readonly=True, sha256="")
            session.add(target)
            entries.append({"disk": device.name, "image_id": target.image_id,
                            "volume_id": target.id, "size_mib": target.size_mib, "bytes": 0,
                            "top_volume_id": device.spec["volume_id"]})
            plan.targets.append(_agent_volume(target))
            if running:
                body_disks.append({"alias": device.user_alias,
                                   "target": targets.get(device.user_alias, ""),
                                   "target_volume": _agent_volume(target),
                                   "parent_volume": _agent_volume(parent) if parent else None})
            else:
                source = vm_sources.disk_source(session, vm, {**device.spec,
                                                              "name": device.name}, "vm_name")
                plan.copies.append((source, _agent_volume(target)))
        row.disks = entries
        plan.backup_id, plan.vm_id, plan.vm_name, plan.running = row.id, vm.id, vm.name, running
        if running:
            plan.host = HostRef.of(vm.run_on_host)
            plan.body = {"backup": row.id, "checkpoint": row.checkpoint_id,
                         "incremental": cp.id if base is not None and cp else "",
                         "checkpoints": _checkpoints(session, vm),
                         "disks": body_disks}
        else:
            plan.host = vm_sources.helper_host(session, vm.cluster_id,
                                               f"cannot back up VM '{vm.name}'")
        audit(session, "vm", vm.name, f"backup {row.id} started ({row.mode}"
              + (f"; full because {reason}" if reason else "") + f") on '{domain}'")
    return plan


def backup(engine, vm_name: str, *, storage_domain: str = "", mode: str = "incremental",
           description: str = "", progress: Progress | None = None,
           timeout: float | None = None) -> dict:
    """Back up a VM's disks (see the module's docstring); the backup's dict. ``timeout``:
    seconds each agent job may take (None: volume_jobs' default)."""
    plan = _plan(engine, vm_name, storage_domain, mode, description)
    assert plan.host is not None
    agent = engine.agent(plan.host.address, plan.host.port)
    try:
        job_context.check_cancelled(f"backup of VM '{vm_name}'")
        if plan.running:
            job = agent.start_backup(plan.vm_id, plan.body)["job"]
            _record_job(engine, plan.backup_id, job, plan.host.name)
            # Not forgotten until the outcome is recorded: reconcile takes a running
            # backup whose job the agent no longer knows for one that was lost.
            result = volume_jobs.wait(agent, job, progress=progress, timeout=timeout,
                                      forget=False)
        else:
            for source, target in plan.copies:
                vm_sources.copy(engine, plan.host, source, target, progress, timeout)
            result = {"disks": [], "fell_back": ""}
    except KestrelError as err:
        why = vm_sources.delete_quietly(agent, plan.targets)
        _failed(engine, plan.backup_id, err.message, why)
        _forget_job(engine, agent, plan.backup_id)
        raise
    done = _succeeded(engine, plan, result)
    _forget_job(engine, agent, plan.backup_id)
    return done


def _forget_job(engine, agent, backup_id: str) -> None:
    with engine.store.transaction(commit=False) as session:
        row = session.get(Backup, backup_id)
        job = row.job_id if row is not None else ""
    if job:
        try:
            agent.forget_job(job)
        except KestrelError:
            pass  # gone already, or the agent restarted: nothing is left to forget


def reconcile(engine) -> list[str]:
    """Fail the ``running`` backups whose work was lost (the engine or the agent died):
    a running VM's whose agent job is gone, or a stopped VM's whose copy lost a file
    (images.reconcile removed it). Their files are deleted; a host that does not
    answer is asked again next round. Returns the ids failed."""
    with engine.store.transaction(commit=False) as session:
        rows = [(b.id, b.job_id, HostRef.of(session.scalars(select(Host).where(
                    Host.name == b.job_host)).one_or_none()) if b.job_host else None,
                 [session.get(Volume, d["volume_id"]) for d in b.disks], b.storage_domain,
                 b.vm_id)
                for b in session.scalars(select(Backup).where(Backup.status == "running"))]
        rows = [(i, job, host, [v for v in files if v is not None], len(files), domain, vm)
                for i, job, host, files, domain, vm in rows]
        lost_files = {i: [_agent_volume(v) for v in files]
                      for i, _j, _h, files, _n, _d, _v in rows}
    failed = []
    for backup_id, job, host, files, count, domain, vm_id in rows:
        if job and host is not None:
            agent = engine.agent(host.address, host.port)
            try:
                agent.job(job)
                continue  # still running or finished: its owner records it
            except NotFound:
                why = f"its agent job {job} on host '{host.name}' was lost"
            except KestrelError:
                continue  # unreachable: we cannot tell yet
        elif not job and (len(files) < count or any(v.status == "illegal" for v in files)):
            why = "copying a disk was lost (agent restarted or engine stopped)"
            with engine.store.transaction(commit=False) as session:
                helper = _volume_host(session, domain, vm_id)
            agent = engine.agent(helper.address, helper.port)
        else:
            continue
        left = vm_sources.delete_quietly(agent, lost_files[backup_id])
        if left:
            continue
        _failed(engine, backup_id, f"backup lost: {why}", "")
        failed.append(backup_id)
    return failed


def _record_job(engine, backup_id: str, job: str, host: str) -> None:
    with engine.store.transaction() as session:
        row = session.get(Backup, backup_id)
        if row is not None:
            row.job_id, row.job_host = job, host


def _failed(engine, backup_id: str, error: str, why_left: str) -> None:
    """A failed backup leaves its row (status failed, the error) and no files."""
    with engine.store.transaction() as session:
        row = session.get(Backup, backup_id)
        if row is None:
            return
        for entry in row.disks:
            volume = session.get(Volume, entry["volume_id"])
            if volume is not None:
                if why_left:
                    volume.status = "illegal"
                else:
                    session.delete(volume)
        row.status, row.finished_at = "failed", utcnow()
        row.error = error + (f" (its files could not be deleted: {why_left})" if why_left
                             else "")
        audit(session, "vm", row.vm_name, f"backup {row.id} failed: {row.error}", "error")


def _succeeded(engine, plan: _Plan, result: dict) -> dict:
    by_alias = {d.get("alias"): d for d in result.get("disks") or []}
    with engine.store.transaction() as session:
        row = session.get(Backup, plan.backup_id)
        assert row is not None
        vm = session.get(Vm, plan.vm_id)
        aliases = {d.name: d.user_alias for d in vm.devices_of(DeviceType.DISK)} if vm else {}
        entries = []
        for entry in row.disks:
            volume = session.get(Volume, entry["volume_id"])
            got = by_alias.get(aliases.get(entry["disk"]), {})
            if volume is not None:
                volume.status = "ok"
                volume.size_mib = int(got.get("size_mib") or volume.size_mib)
            entries.append({**entry, "bytes": int(got.get("bytes") or 0)})
        row.disks = entries
        row.bytes_written = sum(e["bytes"] for e in entries)
        fell_back = result.get("fell_back") or ""
        if fell_back:
            row.mode, row.fallback_reason = "full", fell_back
        if plan.running:
            session.add(Checkpoint(id=row.checkpoint_id, vm_id=plan.vm_id,
                                   parent_id="" if fell_back else row.from_checkpoint_id,
                                   disks=[{"disk": e["disk"], "volume_id": e["top_volume_id"]}
                                          for e in entries],
                                   xml=result.get("checkpoint_xml") or ""))
        if fell_back:
            row.from_checkpoint_id = ""
        for pruned in result.get("pruned") or []:
            old = session.get(Checkpoint, pruned)
            if old is not None and old.vm_id == plan.vm_id:
                session.delete(old)
        row.status, row.finished_at = "succeeded", utcnow()
        audit(session, "vm", row.vm_name, f"backup {row.id} done ({row.mode}, "
              f"{row.bytes_written} bytes)")
        return backup_dict(row)


# -- listing ---------------------------------------------------------------------------------


def list_for(engine, vm_name: str = "") -> list[dict]:
    """A VM's backups (all VMs' without a name), oldest first; a removed VM's stay listed."""
    with engine.store.transaction(commit=False) as session:
        query = select(Backup).order_by(Backup.created_at, Backup.id)
        if vm_name:
            query = query.where(Backup.vm_name == vm_name)
        return [backup_dict(row) for row in session.scalars(query)]


def get(engine, backup_id: str) -> dict:
    with engine.store.transaction(commit=False) as session:
        return backup_dict(_get(session, backup_id))


def _get(session: Session, backup_id: str) -> Backup:
    row = session.get(Backup, backup_id)
    if row is None:
        raise NotFound("backup", backup_id)
    return row


def _volume_host(session: Session, domain: str, vm_id: str = "") -> HostRef:
    """An Up host for work on a backup storage domain: one reporting the domain
    available first, else the backed-up VM's cluster's, else any Up host."""
    hosts = list(session.scalars(select(Host).where(Host.status == HostStatus.UP)
                                 .order_by(Host.name)))
    for host in hosts:
        if any(isinstance(e, dict) and e.get("name") == domain and e.get("available")
               for e in host.storage_domains or []):
            return HostRef.of(host)
    vm = session.get(Vm, vm_id) if vm_id else None
    for host in hosts:
        if vm is None or host.cluster_id == vm.cluster_id:
            return HostRef.of(host)
    raise Conflict(f"no host is Up to work on storage domain '{domain}'; nothing was changed")


# -- removal ---------------------------------------------------------------------------------


def remove(engine, backup_id: str, *, progress: Progress | None = None) -> dict:
    """Remove a restore point. A disk file a later backup builds on is not deleted
    alone: the child's file is committed into it and it takes the child's place, so
    the later restore points read what they read before. The removed backup's dict."""
    with engine.store.transaction() as session:
        row = _get(session, backup_id)
        if row.status == "running":
            raise Conflict(f"backup {row.id} is running; wait for it", backup=row.id)
        removed = backup_dict(row)
        host = _volume_host(session, row.storage_domain, row.vm_id)
        # Locked against a restore while its files change.
        row.status = "removing"
        steps = []
        for entry in row.disks:
            volume = session.get(Volume, entry["volume_id"])
            if volume is None:
                continue
            child = session.scalars(select(Volume).where(Volume.parent_id == volume.id)).first()
            steps.append((volume.id, child.id if child else None))
    agent = engine.agent(host.address, host.port)
    for volume_id, child_id in steps:
        job_context.check_cancelled(f"removal of backup {backup_id}")
        if child_id is None:
            _delete_file(engine, agent, backup_id, volume_id)
        else:
            _merge_child(engine, agent, backup_id, volume_id, child_id, progress)
    with engine.store.transaction() as session:
        row = session.get(Backup, backup_id)
        if row is not None:
            session.delete(row)
            audit(session, "vm", row.vm_name, f"backup {backup_id} removed")
    return removed


def _forget_file(session: Session, backup_id: str, volume_id: str) -> None:
    """The removed backup no longer names a file it gave up, so a retried removal
    (after a crash or failure half way) never merges that file a second time."""
    row = session.get(Backup, backup_id)
    if row is not None:
        row.disks = [d for d in row.disks if d["volume_id"] != volume_id]


def _delete_file(engine, agent, backup_id: str, volume_id: str) -> None:
    with engine.store.transaction(commit=False) as session:
        volume = session.get(Volume, volume_id)
        target = _agent_volume(volume) if volume else None
    if target is not None:
        agent.delete_volumes([target])
    with engine.store.transaction() as session:
        volume = session.get(Volume, volume_id)
        if volume is not None:
            session.delete(volume)
        _forget_file(session, backup_id, volume_id)


def _merge_child(engine, agent, backup_id: str, volume_id: str, child_id: str,
                 progress: Progress | None) -> None:
    """Commit ``child_id`` (a later backup's file) into ``volume_id`` and let the later
    backup name ``volume_id``: its data is then what the child's chain read."""
    with engine.store.transaction(commit=False) as session:
        base, top = session.get(Volume, volume_id), session.get(Volume, child_id)
        assert base is not None and top is not None
        grandchild = session.scalars(select(Volume).where(Volume.parent_id == top.id)).first()
        body = (_agent_volume(base), _agent_volume(top),
                _agent_volume(grandchild) if grandchild else None,
                [_agent_volume(v) for v in base.chain()])
    job = agent.merge_volumes(*body)["job"]
    volume_jobs.wait(agent, job, progress=progress)
    # The child's data is in the base now: the rows say so before its file goes, so a
    # crash between the two leaves an unused file, never a chain naming a missing one.
    with engine.store.transaction() as session:
        base, top = session.get(Volume, volume_id), session.get(Volume, child_id)
        assert base is not None and top is not None
        for below in session.scalars(select(Volume).where(Volume.parent_id == top.id)):
            below.parent_id = base.id
        base.size_mib = max(base.size_mib, top.size_mib)
        base.description = top.description
        for later in session.scalars(select(Backup).where(
                Backup.storage_domain == base.storage_domain)):
            if any(d["volume_id"] == top.id for d in later.disks):
                later.disks = [{**d, "volume_id": base.id} if d["volume_id"] == top.id else d
                               for d in later.disks]
        _forget_file(session, backup_id, base.id)
        session.flush()
        dead = _agent_volume(top)
        session.delete(top)
    agent.delete_volumes([dead])


# -- restore ---------------------------------------------------------------------------------


def restore(engine, backup_id: str, *, vm_name: str = "", disk_name: str = "",
            disk: str = "", storage_domain: str = "",
            progress: Progress | None = None) -> dict:
    """Restore a backup into a new VM (``vm_name``: made from the settings recorded at
    backup time, each disk a flattened copy of its backup chain) or one of its disks
    (``disk``, needed when it has several) into a new floating disk ``disk_name``.
    {"vm": vm dict} or {"disk": floating disk dict}."""
    if bool(vm_name) == bool(disk_name):
        raise InvalidSpec("restore_vm_name", "give either restore_vm_name (a new VM) or "
                                             "restore_disk_name (a new floating disk)")
    if vm_name:
        return _restore_vm(engine, backup_id, vm_name, storage_domain, progress)
    return _restore_disk(engine, backup_id, disk_name, disk, storage_domain, progress)


def _usable(session: Session, backup_id: str) -> Backup:
    row = _get(session, backup_id)
    if row.status != "succeeded":
        raise Conflict(f"backup {row.id} is {row.status}: only a succeeded backup restores",
                       backup=row.id)
    return row


def _restore_disk(engine, backup_id: str, name: str, disk: str, storage_domain: str,
                  progress: Progress | None) -> dict:
    with engine.store.transaction() as session:
        row = _usable(session, backup_id)
        names = [d["disk"] for d in row.disks]
        if not disk and len(names) == 1:
            disk = names[0]
        entry = next((d for d in row.disks if d["disk"] == disk), None)
        if entry is None:
            raise InvalidSpec("disk", f"backup {row.id} holds disk(s) {', '.join(names)}; "
                                      f"name one (got {disk!r})")
        if session.scalars(select(Volume).where(Volume.name == name,
                                                Volume.template_id.is_(None))).first():
            raise Conflict(f"disk '{name}' exists; choose another restore_disk_name", disk=name)
        source = session.get(Volume, entry["volume_id"])
        assert source is not None
        target = Volume(id=str(uuid.uuid4()), image_id=str(uuid.uuid4()),
                        storage_domain=storage_domain or row.storage_domain, format="qcow2",
                        size_mib=source.size_mib, content_type="data", name=name,
                        description=f"restored from backup {row.id} of disk '{disk}' of VM "
                                    f"'{row.vm_name}'", status="locked", readonly=False,
                        sha256="")
        session.add(target)
        session.flush()
        host = _volume_host(session, target.storage_domain, row.vm_id)
        pair = (vm_sources.volume_source(source), _agent_volume(target))
        audit(session, "vm", row.vm_name, f"backup {row.id}: restoring disk '{disk}' as "
              f"floating disk '{name}'")
    try:
        vm_sources.copy(engine, host, *pair, progress=progress)
    except KestrelError:
        why = vm_sources.delete_quietly(engine.agent(host.address, host.port), [pair[1]])
        with engine.store.transaction() as session:
            volume = session.get(Volume, pair[1]["volume"])
            if volume is not None:
                if why:
                    volume.status = "illegal"
                else:
                    session.delete(volume)
        raise
    with engine.store.transaction() as session:
        volume = session.get(Volume, pair[1]["volume"])
        assert volume is not None
        volume.status = "ok"
        return {"disk": {"name": volume.name, "id": volume.id, "image_id": volume.image_id,
                         "storage_domain": volume.storage_domain, "format": volume.format,
                         "size_mib": volume.size_mib, "status": volume.status}}


def _restore_vm(engine, backup_id: str, name: str, storage_domain: str,
                progress: Progress | None) -> dict:
    with engine.store.transaction() as session:
        row = _usable(session, backup_id)
        if not row.vm_config:
            raise Conflict(f"backup {row.id} has no VM settings recorded; restore its disks "
                           "with restore_disk_name instead", backup=row.id)
        if find(session, Vm, name) is not None:
            raise Conflict(f"VM '{name}' exists; choose another restore_vm_name", vm=name)
        config = dict(row.vm_config)
        files = {d["disk"]: session.get(Volume, d["volume_id"]) for d in row.disks}
        disks = []
        for disk in config.get("disks", []):
            disk = {k: v for k, v in disk.items() if k not in ("image_id", "volume_id", "chain")}
            source = files.get(disk["name"])
            if "lun" in disk or source is None:
                continue  # not in the backup: a LUN is the administrator's, not copied
            if storage_domain:
                disk["storage_domain"] = storage_domain
            volume = Volume(id=str(uuid.uuid4()), image_id=str(uuid.uuid4()),
                            storage_domain=disk["storage_domain"], format=disk["format"],
                            size_mib=disk["size_mib"], content_type="data", name="",
                            description="", status="ok", readonly=False, sha256="")
            session.add(volume)
            disk.update(image_id=volume.image_id, volume_id=volume.id)
            disks.append(disk)
        session.flush()
        config.update(name=name, disks=disks)
        try:
            vm = vm_config.create(session, config)
        except InvalidSpec as err:
            raise Conflict(f"backup {row.id}'s VM settings no longer apply: {err.message}",
                           backup=row.id) from None
        session.flush()
        copies = vm_origin.Copies(vm.name, vm_sources.helper_host(
            session, vm.cluster_id, f"cannot restore VM '{name}'"))
        for device in vm.devices_of(DeviceType.DISK):
            source = files.get(device.name)
            if source is None or "lun" in device.spec:
                continue
            volume = session.get(Volume, device.spec["volume_id"])
            # The copy makes the volume: a start meanwhile must not create it blank.
            volume.status, device.volume_created = "locked", True
            copies.pairs.append((vm_sources.volume_source(source),
                                 vm_sources.volume_dict(volume)))
        session.flush()
        audit(session, "vm", name, f"VM restored from backup {row.id} of VM '{row.vm_name}'")
    vm_origin.run_copies(engine, copies, progress)
    return {"vm": engine.vms.info(name)[0]}


class BackupService:
    """The facade the API, the modules and the CLI call (``engine.backups``)."""

    def __init__(self, engine):
        self.engine = engine

    def reconcile(self) -> list[str]:
        """The engine loop's pass over running backups (the module function)."""
        return reconcile(self.engine)

    def info(self, vm_name: str = "", backup_id: str = "") -> list[dict]:
        if backup_id:
            with self.engine.store.transaction(commit=False) as session:
                row = session.get(Backup, backup_id)
                found = backup_dict(row) if row is not None else None
            return [found] if found and (not vm_name or found["vm"] == vm_name) else []
        return list_for(self.engine, vm_name)

    def create(self, vm_name: str, *, storage_domain: str = "", mode: str = "incremental",
               description: str = "", timeout: int | None = None, check_mode: bool = False,
               progress: Progress | None = None) -> Outcome:
        if check_mode:  # what would be asked; the fallback is decided when it runs
            if mode not in MODES:
                raise InvalidSpec("mode", f"must be one of {', '.join(MODES)} (got {mode!r})")
            return Outcome(True, {"vm": vm_name, "mode": mode, "status": "planned",
                                  "storage_domain": storage_domain, "description": description})
        return Outcome(True, backup(self.engine, vm_name, storage_domain=storage_domain,
                                    mode=mode, description=description, progress=progress,
                                    timeout=timeout))

    def remove(self, backup_id: str, check_mode: bool = False,
               progress: Progress | None = None) -> Outcome:
        with self.engine.store.transaction(commit=False) as session:
            row = session.get(Backup, backup_id)
            if row is None:
                return Outcome(False, None)
            if check_mode:
                return Outcome(True, backup_dict(row))
        return Outcome(True, remove(self.engine, backup_id, progress=progress))

    def restore(self, backup_id: str, *, vm_name: str = "", disk_name: str = "",
                disk: str = "", storage_domain: str = "", check_mode: bool = False,
                progress: Progress | None = None) -> Outcome:
        if check_mode:
            with self.engine.store.transaction(commit=False) as session:
                _usable(session, backup_id)
            return Outcome(True, {"vm": {"name": vm_name}} if vm_name
                           else {"disk": {"name": disk_name}})
        return Outcome(True, restore(self.engine, backup_id, vm_name=vm_name,
                                     disk_name=disk_name, disk=disk,
                                     storage_domain=storage_domain, progress=progress))
