"""VM lifecycle: configure, start on a scheduled host, stop, remove.

The database is the source of the VM's configuration; the host's agent is the
source of whether it runs. Before deciding anything about power state the
engine asks the agent, and when the agent cannot be reached it says so rather
than guess (a VM is never assumed Down).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import NoReturn

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm.exc import StaleDataError

from engine_lib import devices
from engine_lib.domxml import render, render_redacted
from engine_lib.domxml.viewmodel import volume_refs
from engine_lib.model import Cluster, Host, Vm, Volume
from engine_lib.protocol.errors import (
    AgentError,
    AgentUnreachable,
    Cancelled,
    Conflict,
    InvalidSpec,
    KestrelError,
    NoValidHost,
    VmNotFound,
)
from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.scheduling import place, resolve
from engine_lib.services import (
    access,
    actor,
    custom_properties,
    hibernation,
    job_context,
    listing,
    snapshots,
    vm_config,
    vm_origin,
)
from engine_lib.services import volumes as volume_registry
from engine_lib.services.common import (
    audit,
    find,
    get_cluster,
    get_host,
    get_vm,
    outcome_unknown,
    retry_on_conflict,
)
from engine_lib.services.host_records import HostRef
from engine_lib.services.results import Outcome
from engine_lib.services.scheduling_facts import (
    host_claims,
    host_state,
    placement_context,
    scheduling_request,
)
from engine_lib.services.stats import with_statistics
from engine_lib.services.vm_records import VM_DICT_LOADS, vm_dict
from engine_lib.spec import choice, normalize_vm
from engine_lib.store import lock_cluster

# A start places the VM only from these: Down, Suspended, or a launch whose caller died
# (an HA restart interrupted) and whose host has no start of it (engine_lib.loop.ha).
_STARTABLE = frozenset({VmStatus.DOWN, VmStatus.SUSPENDED, VmStatus.WAIT_FOR_LAUNCH})
# States that would race a running migration (see _refuse_while_migrating).
_RACE_A_MIGRATION = ("stopped", "suspended", "absent")
STATES = ("present", "running", "stopped", "absent",
          # Hibernate (a Suspended VM runs on from its saved memory when it is "running"
          # again), and reboot a running VM (always a change).
          "suspended", "rebooted")


def _check_sources(session, spec: dict) -> None:
    """A VM made from a template or another VM's snapshot needs read on that source."""
    for key, object_type in (("template", "template"), ("snapshot_vm", "vm")):
        if isinstance(spec.get(key), str):
            access.check(session, "read", object_type, spec[key])


def _check_change(session, vm: Vm, *, created: bool, edited: bool, state: str) -> None:
    """What the actor needs for the change ensure is about to commit: creating (the
    creator then owns the VM, oVirt's UserVmManager), editing, and a foreseen power change."""
    who = actor.current()
    if who.is_local:
        return
    if created:
        access.check(session, "vm.create", "cluster", vm.cluster.name)
        access.grant(session, "UserVmManager", "user", who.user_id, "vm", vm.id)
    elif edited:
        access.check(session, "vm.edit", "vm", vm.name)
    active = vm.status in VmStatus.ACTIVE or vm.launch_unconfirmed
    if (state == "running" and not active
            or state == "stopped" and (active or vm.status == VmStatus.SUSPENDED)
            or state == "suspended" and vm.status != VmStatus.SUSPENDED
            or state == "rebooted"):
        access.check(session, "vm.power", "vm", vm.name)


class VmService:
    def __init__(self, engine):
        self.engine = engine

    # -- the one entry point modules use ---------------------------------------------------

    def ensure(self, spec: dict, *, state: str = "present", check_mode: bool = False,
               force: bool = False, wait: bool = True, timeout: int = 120) -> Outcome:
        if state not in STATES:
            raise InvalidSpec("state", f"must be one of {', '.join(STATES)} (got {state!r})")
        if state != "absent" and vm_origin.has_source_disks(spec):
            with self.engine.store.transaction(commit=False) as session:
                _check_sources(session, spec)  # before reading them
                spec = vm_origin.fill_disks(session, spec)
        wanted = normalize_vm(spec)
        if state == "absent":  # before anything about the VM is told or done
            self.engine.access.check("vm.delete", "vm", wanted["name"])
        if state in _RACE_A_MIGRATION:
            self._refuse_while_migrating(wanted["name"], state)
        try:
            if state == "absent":
                return self._remove(wanted["name"], check_mode=check_mode)
            return self._ensure_present(wanted, state, check_mode, force, wait, timeout)
        except StaleDataError:
            raise Conflict(f"VM '{wanted['name']}' was changed by someone else at the same "
                           "time; run again") from None

    def _ensure_present(self, wanted: dict, state: str, check_mode: bool, force: bool,
                        wait: bool, timeout: int) -> Outcome:
        name = wanted["name"]
        with self.engine.store.transaction(commit=not check_mode) as session:
            # Locked (PostgreSQL) so the engine loop's status and device writes to this
            # VM wait for this change, or this change for theirs: neither is lost.
            vm = session.execute(select(Vm).where(Vm.name == name).with_for_update()
                                 ).scalar_one_or_none()
            before_xml = render(vm) if vm else ""
            shown_before = render_redacted(vm) if vm else ""
            properties_before = vm and (vm.cluster.name, dict(vm.custom_properties))
            copies = None
            if vm is None:
                _check_sources(session, wanted)
                if "cluster" in wanted:  # else the source's, checked once it is known
                    access.check(session, "vm.create", "cluster", wanted["cluster"])
            if vm is None and ("template" in wanted or "snapshot_vm" in wanted):
                vm, copies = vm_origin.create(session, wanted,
                                              lambda spec: vm_config.create(session, spec))
            elif vm is None:
                vm = vm_config.create(session, wanted)
            else:
                access.check(session, "read", "vm", name)  # before it tells anything
                vm_origin.check_unchanged(vm, wanted)
                vm_config.apply(session, vm, vm_origin.without_origin(wanted))
            # Checked when they change: a VM whose properties are no longer allowed can
            # still be stopped or edited (it does not start).
            if properties_before != (vm.cluster.name, vm.custom_properties):
                custom_properties.check_vm(vm)
            session.flush()
            after_xml, shown_after = render(vm), render_redacted(vm)
            _check_change(session, vm, created=not before_xml,
                          edited=before_xml != after_xml, state=state)
            if not before_xml:
                audit(session, "vm", name, f"VM created in cluster {vm.cluster.name}")
            elif before_xml != after_xml:
                audit(session, "vm", name, "VM configuration changed")
            entity = vm_dict(vm)
            unconfirmed = vm.launch_unconfirmed
        if copies is not None and not check_mode:
            vm_origin.run_copies(self.engine, copies)  # before any start
        config_changed = before_xml != after_xml

        power_changed = False
        if unconfirmed:
            # Its host owes an answer for a start: only that answer (the engine loop
            # records it) settles where the VM runs; a second start could make a copy.
            if state == "running":
                raise _awaiting_host(name, entity)
            running = True
        else:
            running = entity["status"] in VmStatus.ACTIVE and self._still_running(name)
        if state == "running" and not running:
            power_changed = True
            if entity["status"] in VmStatus.ACTIVE:  # it died: a start _check_change foresaw not
                self.engine.access.check("vm.power", "vm", name)
            if not check_mode:
                entity = self._start(name, wait=wait, timeout=timeout)
            else:
                entity["status"] = VmStatus.UP
        elif state == "stopped" and running:
            power_changed = True
            if not check_mode:
                entity = self._stop(name, force=force, timeout=timeout)
            else:
                entity["status"] = VmStatus.DOWN
        elif state == "stopped" and entity["status"] == VmStatus.SUSPENDED:
            power_changed = True  # stopping a Suspended VM discards its saved memory
            if not check_mode:
                hibernation.discard(self.engine, name)
                entity = self._reload(name)
            else:
                entity["status"] = VmStatus.DOWN
        elif state == "suspended" and entity["status"] != VmStatus.SUSPENDED:
            if not running:
                raise Conflict(f"cannot suspend VM '{name}': it is not running (status "
                               f"{entity['status']})", vm=name)
            power_changed = True
            if not check_mode:
                entity = hibernation.suspend(self.engine, name)
            else:
                entity["status"] = VmStatus.SUSPENDED
        elif state == "rebooted":
            if not running:
                raise Conflict(f"cannot reboot VM '{name}': it is not running (status "
                               f"{entity['status']})", vm=name)
            power_changed = True
            if not check_mode:
                entity = hibernation.reboot(self.engine, name)
        elif not check_mode:
            entity = self._reload(name)
        # A running domain keeps the XML it started with until it restarts.
        entity["next_run"] = config_changed and running and state != "stopped"
        return Outcome(config_changed or power_changed, entity,
                       {"before": shown_before, "after": shown_after})

    # -- power state -----------------------------------------------------------------------

    def _reload(self, name: str) -> dict:
        with self.engine.store.transaction(commit=False) as session:
            return vm_dict(get_vm(session, name))

    def _client(self, host: HostRef):
        return self.engine.agent(host.address, host.port)

    def _still_running(self, name: str) -> bool:
        """Ask the VM's host whether it runs; record the answer if it does not."""
        with self.engine.store.transaction(commit=False) as session:
            vm = get_vm(session, name)
            host, vm_id = HostRef.of(vm.run_on_host), vm.id
        if host is None:
            return False
        try:
            status = self._client(host).vm_status(vm_id)["status"]
        except VmNotFound:
            status = VmStatus.DOWN
        if status == VmStatus.DOWN:
            self._mark_down(name, f"not running on host {host.name}")
            return False
        return True

    # Written after the agent acted, so never given up on a conflict: the engine loop
    # may have written the same VM meanwhile (its event, its devices), and a retry
    # re-reads it.
    @retry_on_conflict
    def _mark_down(self, name: str, reason: str, severity: str = "info") -> dict:
        with self.engine.store.transaction() as session:
            vm = get_vm(session, name)
            vm.status, vm.exit_reason, vm.run_on_host = VmStatus.DOWN, reason, None
            vm.launch_unconfirmed = False
            audit(session, "vm", name, f"VM is Down: {reason}", severity)
            return vm_dict(vm)

    def _place(self, session, vm: Vm) -> tuple[HostRef, dict]:
        """Choose a host with the cluster's policy and claim its resources in the caller's
        transaction (the cluster row is locked, so concurrent starts decide one at a time)."""
        cluster = lock_cluster(session, vm.cluster_id)
        hosts = list(session.scalars(select(Host).where(Host.cluster_id == cluster.id)
                                     .order_by(Host.name)))
        claims = host_claims(session)
        policy = resolve(cluster.scheduling_policy, cluster.scheduling_properties,
                         ha_reservation=cluster.ha_reservation)
        decision = place(scheduling_request(vm), [host_state(h, claims.get(h.id), cluster)
                                                  for h in hosts],
                         policy, placement_context(session, cluster))
        if decision.host is None:
            raise NoValidHost(vm.name, decision.explain())
        host = hosts[decision.host_index]
        vm.run_on_host, vm.status, vm.exit_reason = host, VmStatus.WAIT_FOR_LAUNCH, ""
        audit(session, "vm", vm.name, f"VM scheduled on host {host.name} (policy {policy.name})")
        return HostRef.of(host), decision.explain()

    def _start(self, name: str, wait: bool, timeout: int) -> dict:
        job = job_context.current()
        job.progress(0, "scheduling")
        job_context.check_cancelled(f"start of VM '{name}' before it was scheduled; nothing "
                                    "was changed")
        try:
            with self.engine.store.transaction() as session:
                vm = get_vm(session, name)
                if vm.launch_unconfirmed or vm.status not in _STARTABLE:
                    raise _awaiting_host(name, vm_dict(vm))
                # A snapshot create/revert/merge of the stopped VM rewrites its chain.
                snapshots.check_unlocked(session, vm, "start it")
                custom_properties.check_vm(vm, starting=True)  # the cluster's list may change
                cluster = vm.cluster.name
                host, placement = self._place(session, vm)
                xml, vm_id = render(vm), vm.id
                memory = dict(vm.memory_volume) if vm.memory_volume else None
        except NoValidHost as err:
            # A host power saving switched off may take it: bring one back (outside the
            # transaction, which held the cluster lock), and say so.
            powering = self.engine.power_saving.request_capacity(
                cluster, f"no host can start VM '{name}'")
            if powering is None:
                raise
            raise NoValidHost(name, err.explanation, note=f"host {powering} is being brought "
                              "back by power saving; the VM can start once it is Up") from None
        client = self._client(host)
        job.progress(20, f"starting on host {host.name}")
        try:
            if memory:  # Suspended: the guest runs on from its saved memory
                volume, keep = hibernation.restore_args(memory)
                reported = client.restore_vm(xml, volume, keep_memory=keep)
                hibernation.restored(self.engine, name)
            else:
                reported = client.start_vm(xml)
        except KestrelError as err:
            if outcome_unknown(err):
                # The agent may have taken the call and be starting it still (hooks,
                # volumes): the VM waits on that host with its claim, never Down on a guess.
                self._await_host(name, host.name, err)
                raise AgentUnreachable(
                    f"start of VM '{name}' on host {host.name} not confirmed: {err.message}; "
                    f"the VM waits on host {host.name} until the host reports it running or "
                    "not (the engine loop records it)", vm=name, host=host.name) from None
            if memory:
                hibernation.restore_failed(self.engine, name, host.name, err.message)
            else:
                self._mark_down(name, f"start failed on host {host.name}: {err.message}",
                                "error")
            raise
        status = reported.get("status", VmStatus.POWERING_UP)
        deadline, pause = time.monotonic() + timeout, 0.05
        job.progress(60, f"waiting for Up on host {host.name}")
        while True:
            # A restored guest's saved memory is consumed: stopping it would lose it.
            if not memory and job.cancel_requested():
                self._cancel_start(name, host, vm_id)
            if not wait or status == VmStatus.UP:
                break
            if status == VmStatus.DOWN or time.monotonic() > deadline:
                raise AgentError(f"VM '{name}' did not come Up on host {host.name} within "
                                 f"{timeout}s (last status {status})", status=status)
            # Most guests are Up a moment after libvirt started them: ask soon, then less.
            time.sleep(pause)
            pause = min(0.5, pause * 2)
            status = client.vm_status(vm_id)["status"]
        entity = self._record_started(name, host.name, status, client.vm_xml(vm_id))
        entity["placement"] = placement
        job.progress(100, f"{status} on host {host.name}")
        return entity

    def _cancel_start(self, name: str, host: HostRef, vm_id: str) -> NoReturn:
        """Undo a start its user cancelled: destroy the domain through its agent, then
        record the VM Down (which releases its claim on the host)."""
        client = self._client(host)
        try:
            client.destroy_vm(vm_id)
            client.remove_vm(vm_id)
        except VmNotFound:
            pass  # it never got as far as a domain, or it died meanwhile
        except KestrelError as err:
            # Not stopped for sure: the VM stays as the host reports it (the engine loop
            # records it), never Down on a guess.
            kind = AgentUnreachable if isinstance(err, AgentUnreachable) else AgentError
            raise kind(f"start of VM '{name}' on host {host.name} was cancelled, but "
                       f"stopping it failed: {err.message}; the VM stays as host "
                       f"{host.name} reports it", vm=name, host=host.name) from None
        self._mark_down(name, f"start on host {host.name} cancelled by its user")
        raise Cancelled(f"cancelled by its user: start of VM '{name}' on host {host.name}; "
                        f"the VM was stopped there (destroyed) and is Down, its resources on "
                        f"host {host.name} released", vm=name, host=host.name)

    @retry_on_conflict
    def _await_host(self, name: str, host_name: str, err: KestrelError) -> None:
        """The start call ended without an answer: the VM waits for its host's."""
        with self.engine.store.transaction() as session:
            vm = get_vm(session, name)
            if vm.status not in VmStatus.LAUNCHING or vm.run_on_host is None \
                    or vm.run_on_host.name != host_name:
                return  # the host already answered (the engine loop recorded it)
            vm.launch_unconfirmed = True
            audit(session, "vm", name, f"start on host {host_name} not confirmed "
                  f"({err.message}): the VM waits on host {host_name}, holding its "
                  "resources, until the host reports it", "warning")

    @retry_on_conflict
    def _record_started(self, name: str, host_name: str, status: str, live: str) -> dict:
        with self.engine.store.transaction() as session:
            vm = get_vm(session, name)
            vm.status, vm.launch_unconfirmed = status, False
            devices.record_live(vm, live)
            audit(session, "vm", name, f"VM started on host {host_name} ({status})")
            return vm_dict(vm)

    def _refuse_while_migrating(self, name: str, state: str) -> None:
        """Stopping, saving or removing a VM mid-migration would race the migration's own
        outcome (which decides where the VM runs): the user waits for it or cancels it."""
        with self.engine.store.transaction(commit=False) as session:
            vm = find(session, Vm, name)
            if vm is None or vm.status not in (VmStatus.MIGRATING_FROM, VmStatus.MIGRATING_TO):
                return
            host = vm.run_on_host.name if vm.run_on_host else "?"
        raise Conflict(f"VM '{name}' is migrating away from host {host}: it cannot be made "
                       f"{state} until the migration ends; wait for it, or cancel it with "
                       f"`kestrel vm cancel-migration {name}`. Nothing was changed")

    def _stop(self, name: str, force: bool, timeout: int) -> dict:
        with self.engine.store.transaction() as session:
            vm = get_vm(session, name)
            host, vm_id = HostRef.of(vm.run_on_host), vm.id
            if host is None:
                return vm_dict(vm)
            vm.status = VmStatus.POWERING_DOWN
        client = self._client(host)
        try:
            if force:
                client.destroy_vm(vm_id)
            else:
                client.shutdown_vm(vm_id, timeout)
        except VmNotFound:
            pass
        try:
            client.remove_vm(vm_id)
        except VmNotFound:
            pass
        return self._mark_down(name, "powered off" if force else "shut down")

    # -- removal ---------------------------------------------------------------------------

    def _remove(self, name: str, check_mode: bool) -> Outcome:
        with self.engine.store.transaction(commit=False) as session:
            vm = find(session, Vm, name)
            if vm is None:
                return Outcome(False, None, {"before": "", "after": ""})
            before_xml, active = render_redacted(vm), vm.status in VmStatus.ACTIVE
        diff = {"before": before_xml, "after": ""}
        if check_mode:
            return Outcome(True, None, diff)
        if active and self._still_running(name):
            self._stop(name, force=True, timeout=0)
        with self.engine.store.transaction(commit=False) as session:
            vm = get_vm(session, name)
            volumes = [asdict(ref) for ref in volume_refs(vm)]
            own = [ref["volume"] for ref in volumes]
            dependents = volume_registry.children(session, own)
            if dependents:  # deleting a backing volume would wreck its overlays
                raise Conflict(f"cannot remove VM '{name}': its volumes back "
                               + ", ".join(f"{vm_name} disk {disk}" if vm_name else
                                           f"floating disk {disk}"
                                           for vm_name, disk in dependents)
                               + "; nothing was removed")
            # A Suspended VM's saved memory goes with it (a snapshot's goes with the snapshot).
            if vm.memory_volume and "snapshot" not in vm.memory_volume:
                volumes.append(dict(vm.memory_volume))
            # Its snapshots' volumes under the tops (never a template's) and saved memory.
            frozen = snapshots.frozen_volumes(session, vm)
            volumes += [{"domain": v.storage_domain, "image": v.image_id, "volume": v.id}
                        for v in frozen]
            volumes += [dict(s.memory_volume) for s in vm.snapshots if s.memory_volume]
            frozen_ids = [v.id for v in frozen]
            helper = HostRef.of(session.scalars(select(Host).where(
                Host.cluster_id == vm.cluster_id, Host.status == HostStatus.UP)
                .order_by(Host.name)).first())
        if volumes:
            if helper is None:
                raise Conflict(f"cannot delete the disks of VM '{name}': no host of its cluster "
                               "is Up; nothing was removed")
            # Volumes go first: if that fails the VM is still in the database to retry.
            self._client(helper).delete_volumes(volumes)
        with self.engine.store.transaction() as session:
            vm = get_vm(session, name)
            access.forget_object(session, "vm", vm.id)
            session.delete(vm)
            session.flush()
            # Its disks' files are gone, so are their rows (a backing volume stays).
            for row in session.scalars(select(Volume).where(Volume.id.in_(own))):
                session.delete(row)
            for volume_id in frozen_ids:  # nearest first: each one's overlay is gone
                session.flush()
                row = session.get(Volume, volume_id)
                if row is not None:
                    session.delete(row)
            audit(session, "vm", name, "VM removed")
        return Outcome(True, None, diff)

    # -- reading ---------------------------------------------------------------------------

    def info(self, name: str | None = None, cluster: str | None = None,
             host: str | None = None) -> list[dict]:
        with self.engine.store.transaction(commit=False) as session:
            query = select(Vm).options(*VM_DICT_LOADS).order_by(Vm.name)
            if name:
                query = query.where(Vm.name == name)
            if cluster:
                query = query.where(Vm.cluster_id == get_cluster(session, cluster).id)
            if host:
                query = query.where(Vm.run_on_host_id == get_host(session, host).id)
            return with_statistics(session, "vm", [vm_dict(vm) for vm in session.scalars(query)])

    def page(self, *, offset: int = 0, limit: int = listing.DEFAULT_LIMIT,
             name: str | None = None, cluster: str | None = None, host: str | None = None,
             status: str | None = None, visible: ColumnElement | None = None) -> dict:
        """One page of the VMs the caller may read, by name (services.listing)."""
        with self.engine.store.transaction(commit=False) as session:
            query = select(Vm).options(*VM_DICT_LOADS).order_by(Vm.name)
            if cluster is not None:
                query = query.where(listing.named(Vm.cluster_id, Cluster, "cluster", cluster))
            if host is not None:
                query = query.where(listing.named(Vm.run_on_host_id, Host, "host", host))
            if status is not None:
                status = choice("status", status, tuple(VmStatus))
            page = listing.page(session, query, to_dict=vm_dict, offset=offset, limit=limit,
                                name=name, name_column=Vm.name, status=status,
                                status_column=Vm.status,
                                visible=listing.readable(session, "vm", visible))
            with_statistics(session, "vm", page["items"])
            return page

    def domain_xml(self, name: str) -> str:
        """The domain XML the engine would send for this VM (placeholders unresolved,
        secrets masked)."""
        with self.engine.store.transaction(commit=False) as session:
            return render_redacted(get_vm(session, name))

    def console(self, name: str, nbytes: int = 8192) -> str:
        """The tail of the VM's serial console log, read through its host's agent."""
        with self.engine.store.transaction(commit=False) as session:
            vm = get_vm(session, name)
            if vm.run_on_host is None:
                raise Conflict(f"VM '{name}' is not running (status {vm.status})")
            host, vm_id = HostRef.of(vm.run_on_host), vm.id
        return self._client(host).console_log(vm_id, nbytes)


def _awaiting_host(name: str, entity: dict) -> Conflict:
    """A start refused: the VM waits for its host to answer for one, or it runs."""
    host = entity.get("host")
    if entity["status"] in VmStatus.LAUNCHING:
        message = (f"VM '{name}' is {entity['status']} on host {host}: that host has not "
                   "answered for its start yet, so it is not started again; the engine loop "
                   f"records it running or Down once {host} answers")
    else:
        message = (f"VM '{name}' is {entity['status']} on host {host}: it is not started "
                   "again")
    return Conflict(message, vm=name, status=entity["status"], host=host)
