"""What the guests' qemu-guest-agent reports, kept on the VM row.

The Monitor's VM poll asks each host's agent once for all its Up VMs
(``GET /guests``) and stores each answer (``Vm.guest_info``). A guest whose agent does not
answer keeps its last report: a busy agent must not make a VM lose its
address in the inventory. A VM that is not running shows no guest data.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from engine_lib.model import Host, Vm, utcnow
from engine_lib.protocol.errors import KestrelError
from engine_lib.services.common import retry_on_conflict

log = logging.getLogger("kestrel.engine.guest_info")


def refresh(engine, host, vm_ids: list[str]) -> None:
    """Ask ``host``'s agent for the guest info of ``vm_ids`` (Up VMs) and store it."""
    if not vm_ids:
        return
    try:
        answer = engine.agent(host.address, host.port).guests_info()
    except KestrelError as err:
        log.warning("guest info of the VMs on host %s: %s", host.name, err.message)
        return
    for vm_id in vm_ids:
        report = answer["guests"].get(vm_id)
        if report is None:
            continue  # no agent in the guest (yet), or it did not answer: keep what we knew
        try:
            _store(engine, host.name, vm_id, report)
        except KestrelError as err:  # the row kept changing: next poll
            log.info("guest info of VM %s not stored: %s", vm_id, err.message)


@retry_on_conflict
def _store(engine, host_name: str, vm_id: str, report: dict) -> None:
    with engine.store.transaction() as session:
        vm = session.get(Vm, vm_id)
        host = session.execute(select(Host).where(Host.name == host_name)).scalar_one_or_none()
        if vm is None or host is None or vm.run_on_host_id != host.id:
            return  # moved or removed meanwhile
        # Written only when it changed: every write bumps the row version, and a
        # module changing the VM at the same time would have to retry.
        if vm.guest_info != report:
            vm.guest_info, vm.guest_info_at = report, utcnow()
