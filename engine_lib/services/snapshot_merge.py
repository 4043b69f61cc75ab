"""Deleting a snapshot: merge, for each disk, the volume above the one it froze.

Snapshot S froze volume V of a disk; C is the volume whose parent is V in that
disk's chain. Deleting S commits C into V, rebases C's child (if any) onto V and
removes C; if C was the disk's top, V becomes the top. Any snapshot may go, not
only the newest. A running VM merges live (the agent's block commit, pivoting
when C is the active layer); a stopped one offline (qemu-img commit + rebase -u).

Each disk's merge leaves a chain that reads the same data, so a crash anywhere
is settled by running the same merge again: the snapshot row stays ``locked``
with operation ``merge`` until the end, and each disk entry notes when its rows
are done (``merged``: the C that went), so a retry never merges a second
volume into V and still removes a C whose file outlived the crash. The file of
C is deleted only after the rows that name it are gone.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm.attributes import flag_modified

from engine_lib.domxml.render import render
from engine_lib.model import DeviceType, Host, Snapshot, Vm, Volume
from engine_lib.protocol.errors import AgentUnreachable, Conflict, KestrelError, NotFound
from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.services import volume_jobs
from engine_lib.services.common import audit, get_vm, retry_on_conflict
from engine_lib.services.host_records import HostRef
from engine_lib.services.volumes import chain_refs

_LIVE = frozenset({VmStatus.UP, VmStatus.PAUSED})
_METADATA = re.compile(r"<kestrel:vm\b.*?</kestrel:vm>", re.S)
# A merge is as long as the data to commit; an hour covers a big disk on slow storage.
TIMEOUT_S = 3600.0
# A live merge's copy rate limit in MiB/s (0: none); a seam the lab tests slow it with.
BANDWIDTH_MIBPS = 0
# How often one delete posts a disk's merge whose job the agent lost (restarts) before it
# leaves the lock to the reconcile.
LOST_JOB_POSTS = 3


class SnapshotMerges:
    """The facade's ``snapshot_merge`` (the API's DELETE /vms/{vm_name}/snapshots/{id})."""

    def __init__(self, engine):
        self.engine = engine
        self._seen: dict[str, int] = {}  # the reconcile's previous round

    def delete(self, vm_name: str, snapshot_id: str,
               progress: Callable[[dict], None] | None = None) -> dict:
        """Delete a snapshot of a VM by merging its volumes (live when it runs)."""
        return delete(self.engine, vm_name, snapshot_id, progress=progress)

    def reconcile(self) -> list[str]:
        return reconcile(self.engine, self._seen)


def delete(engine, vm_name: str, snapshot_id: str, *, progress=None) -> dict:
    """Delete snapshot ``snapshot_id`` of VM ``vm_name``; returns {snapshot, vm, live,
    disks: [{disk, merged: C's id, into: V's id}]}."""
    plan = _lock(engine, vm_name, snapshot_id, retry=False)
    return _run(engine, plan, progress)


@retry_on_conflict
def _lock(engine, vm_name: str, snapshot_id: str, retry: bool) -> dict:
    """Check, take the VM's snapshot lock, and say where the merges run. The VM row's
    version is bumped as a snapshot's create does, so of a merge and any other operation
    locking the same VM at once, the second commit fails and its retry sees the lock."""
    with engine.store.transaction() as session:
        vm = get_vm(session, vm_name)
        snap = session.get(Snapshot, snapshot_id)
        if snap is None or snap.vm_id != vm.id:
            raise NotFound("snapshot", snapshot_id)
        busy = session.scalars(select(Snapshot).where(
            Snapshot.vm_id == vm.id, Snapshot.status == "locked")).all()
        for other in busy:
            if not (retry and other.id == snap.id and other.operation == "merge"):
                raise Conflict(f"VM '{vm_name}' has a snapshot operation running: "
                               f"{other.operation or 'locked'} of snapshot {other.id}",
                               vm=vm_name, snapshot=other.id, operation=other.operation)
        if vm.status in _LIVE and vm.run_on_host is not None:
            host, live = HostRef.of(vm.run_on_host), True
        elif vm.status == VmStatus.DOWN:
            host, live = HostRef.of(session.scalars(select(Host).where(
                Host.cluster_id == vm.cluster_id, Host.status == HostStatus.UP)
                .order_by(Host.name)).first()), False
            if host is None:
                raise Conflict(f"cannot delete a snapshot of VM '{vm_name}': no host of its "
                               "cluster is Up to merge its volumes", vm=vm_name)
        else:
            raise Conflict(f"VM '{vm_name}' is {vm.status}: a snapshot is deleted while it "
                           "is Up, Paused or Down", vm=vm_name, status=str(vm.status))
        snap.status, snap.operation, snap.job_host = "locked", "merge", host.name
        flag_modified(vm, "description")
        snap.job_id = ""
        audit(session, "vm", vm_name, f"deleting snapshot {snap.id} "
                                      f"({'live' if live else 'offline'} merge)")
        return {"vm": vm_name, "vm_id": vm.id, "snapshot": snap.id, "host": host,
                "live": live}


def _run(engine, plan: dict, progress) -> dict:
    agent = engine.agent(plan["host"].address, plan["host"].port)
    done = []
    try:
        with engine.store.transaction(commit=False) as session:
            entries = list(session.get(Snapshot, plan["snapshot"]).disks)
        for index, entry in enumerate(entries):
            if entry.get("merged"):
                _delete_file(agent, entry)  # a crash after the rows, before the file
                done.append({"disk": entry["disk"], "merged": entry["merged"]["volume"],
                             "into": entry["volume_id"]})
                continue
            step = _disk_step(engine, plan, entry)
            if step is None:
                continue
            _merge(engine, agent, plan, step, progress)
            merged = _commit_rows(engine, plan, index, step)
            _delete_file(agent, {"merged": merged})
            done.append({"disk": entry["disk"], "merged": step["c"]["volume"],
                         "into": step["v"]["volume"]})
        memory = _finish(engine, plan)
    except BaseException as exc:
        _unlock(engine, plan, exc)
        raise
    if memory:
        try:
            agent.delete_volumes([memory])
        except KestrelError:  # the snapshot is gone; a stray memory file only takes space
            pass
    return {"snapshot": plan["snapshot"], "vm": plan["vm"], "live": plan["live"],
            "disks": done}


def _ref(volume: Volume) -> dict:
    return {"domain": volume.storage_domain, "image": volume.image_id, "volume": volume.id,
            "format": volume.format}


def _disk_step(engine, plan: dict, entry: dict) -> dict | None:
    """What merging this disk means now: V, C, C's child, the chain below V, and the
    metadata of the chain after the merge. None when the disk is gone."""
    with engine.store.transaction(commit=False) as session:
        vm = session.get(Vm, plan["vm_id"])
        device = next((d for d in vm.devices if d.type == DeviceType.DISK
                       and d.name == entry["disk"]), None)
        if device is None:
            return None
        top = session.get(Volume, device.spec["volume_id"])
        chain = [top, *top.chain()]
        ids = [v.id for v in chain]
        if entry["volume_id"] not in ids[1:]:
            raise KestrelError(f"disk '{entry['disk']}': volume {entry['volume_id']} this "
                               "snapshot froze has no overlay in the disk's chain",
                               disk=entry["disk"])
        at = ids.index(entry["volume_id"])
        v, c = chain[at], chain[at - 1]
        child = chain[at - 2] if at >= 2 else None
        step = {"disk": device.name, "alias": device.user_alias, "v": _ref(v), "c": _ref(c),
                "child": _ref(child) if child else None,
                "below": [_ref(x) for x in chain[at + 1:]], "top_is_active": child is None}
        # The chain after the merge, rendered from rows changed in this throwaway session.
        _apply(session, device, v, c, child)
        session.flush()
        step["metadata"] = _METADATA.search(render(vm)).group(0) if plan["live"] else ""
        return step


def _apply(session, device, v: Volume, c: Volume, child: Volume | None) -> None:
    """The rows after merging C into V: C's child on V (or V the top), C gone."""
    spec = copy.deepcopy(device.spec)
    if child is None:
        spec["volume_id"] = v.id
        top = v
    else:
        child.parent_id = v.id
        child.parent = v
        top = session.get(Volume, spec["volume_id"])
    session.flush()
    chain = chain_refs(top)
    if chain:
        spec["chain"] = chain
    else:
        spec.pop("chain", None)
    device.spec = spec
    flag_modified(device, "spec")
    session.delete(c)


def _merge(engine, agent, plan: dict, step: dict, progress) -> None:
    """Post the disk's merge and wait for it. A live merge whose job the agent lost (it
    restarted) is posted again: QEMU's block job outlives the agent, and the agent adopts
    it (or finds the merge done); a merge that really failed fails again, as itself. An
    offline one is left locked to the reconcile: the lost agent's qemu-img may still run."""
    for attempt in range(1, LOST_JOB_POSTS + 1):
        if plan["live"]:
            answer = agent.start_merge(plan["vm_id"], {
                "alias": step["alias"], "base": step["v"], "top": step["c"],
                "top_is_active": step["top_is_active"], "metadata": step["metadata"],
                **({"bandwidth_mibps": BANDWIDTH_MIBPS} if BANDWIDTH_MIBPS else {})})
        else:
            answer = agent.merge_volumes(step["v"], step["c"], step["child"], step["below"])
        with engine.store.transaction() as session:
            session.get(Snapshot, plan["snapshot"]).job_id = answer["job"]
        try:
            volume_jobs.wait(agent, answer["job"], progress=progress, timeout=TIMEOUT_S)
            return
        except volume_jobs.JobLost:
            if attempt == LOST_JOB_POSTS or not plan["live"]:
                raise


def _commit_rows(engine, plan: dict, index: int, step: dict) -> dict:
    """The merge is on storage: the rows follow, and the entry notes it is done."""
    with engine.store.transaction() as session:
        vm = session.get(Vm, plan["vm_id"])
        device = next(d for d in vm.devices if d.type == DeviceType.DISK
                      and d.name == step["disk"])
        v, c = session.get(Volume, step["v"]["volume"]), session.get(Volume, step["c"]["volume"])
        child = session.get(Volume, step["child"]["volume"]) if step["child"] else None
        _apply(session, device, v, c, child)
        for snap in session.scalars(select(Snapshot).where(Snapshot.vm_id == vm.id)):
            disks = [dict(d, volume_id=v.id) if d.get("volume_id") == c.id else dict(d)
                     for d in snap.disks]
            if snap.id == plan["snapshot"]:
                disks[index]["merged"] = {k: step["c"][k] for k in ("domain", "image",
                                                                     "volume")}
            if disks != snap.disks:
                snap.disks = disks
                flag_modified(snap, "disks")
        snap = session.get(Snapshot, plan["snapshot"])
        snap.job_id = ""
        return dict(snap.disks[index]["merged"])


def _delete_file(agent, entry: dict) -> None:
    agent.delete_volumes([entry["merged"]])


def _finish(engine, plan: dict) -> dict | None:
    with engine.store.transaction() as session:
        snap = session.get(Snapshot, plan["snapshot"])
        memory = dict(snap.memory_volume) if snap.memory_volume else None
        session.delete(snap)
        audit(session, "vm", plan["vm"], f"snapshot {plan['snapshot']} deleted")
    return memory


def _unlock(engine, plan: dict, exc: BaseException) -> None:
    """A merge that failed (not lost) leaves a chain that reads the same data: what is
    merged stays merged. With no disk merged yet the snapshot is as it was (ok); with
    some, reverting to it would not give its data back: illegal, to be deleted again."""
    if isinstance(exc, (AgentUnreachable, volume_jobs.JobLost)):
        return  # QEMU's job may still run: the reconcile settles it
    with engine.store.transaction() as session:
        snap = session.get(Snapshot, plan["snapshot"])
        if snap is not None:
            partly = any(d.get("merged") for d in snap.disks)
            snap.status, snap.operation, snap.job_id = ("illegal" if partly else "ok"), "", ""
            audit(session, "vm", plan["vm"], f"deleting snapshot {snap.id} failed: {exc}",
                  "error")


def reconcile(engine, seen: dict[str, int]) -> list[str]:
    """Settle merge locks whose operation died (agent or engine restarted): run the same
    merge again (the agent adopts a block job still running, and a merge already on
    storage only sets the metadata); returns the snapshot ids settled.

    A lock counts as dead when its row is unchanged since the previous round (``seen``:
    snapshot id -> row version, kept by the caller) and its agent job is not running: a
    live delete() changes the row at every step and waits only on a running job."""
    with engine.store.transaction(commit=False) as session:
        rows = session.execute(select(Snapshot.id, Snapshot.version, Snapshot.job_id,
                                      Snapshot.job_host, Vm.name)
                               .join(Vm, Snapshot.vm_id == Vm.id)
                               .where(Snapshot.status == "locked",
                                      Snapshot.operation == "merge")).all()
        hosts = {h.name: HostRef.of(h) for h in session.scalars(select(Host))}
    previous = dict(seen)
    seen.clear()
    seen.update({row[0]: row[1] for row in rows})
    settled = []
    for snapshot_id, version, job_id, host_name, vm_name in rows:
        if previous.get(snapshot_id) != version:
            continue
        host = hosts.get(host_name)
        if job_id and host is not None:
            try:
                if engine.agent(host.address, host.port).job(job_id).get("status") \
                        == "running":
                    continue  # a delete() still waits on it
            except NotFound:
                pass
            except KestrelError:
                continue  # agent unreachable: ask again next round
        try:
            _run(engine, _lock(engine, vm_name, snapshot_id, retry=True), None)
        except KestrelError:
            continue
        seen.pop(snapshot_id, None)
        settled.append(snapshot_id)
    return settled
