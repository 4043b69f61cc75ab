"""Asking a guest's qemu-guest-agent through libvirt, bounded in time.

A guest without an answering agent is normal (still booting, no agent
installed), so every question has a timeout and a silent agent is
GuestAgentUnavailable, not a libvirt failure. What the answers mean is
engine_lib.agent.guest_agent's job (pure); this module only asks.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import libvirt

from engine_lib.agent import guest_agent
from engine_lib.agent.domains import is_active
from engine_lib.protocol.errors import GuestAgentUnavailable, LibvirtError, VmNotFound

# How long one question to qemu-guest-agent may take: a guest without an
# answering agent must not hold an API thread (libvirt's default is to block).
GUEST_AGENT_TIMEOUT = 5
# Guests asked at once by ask_all(): a few silent guest agents, each taking
# GUEST_AGENT_TIMEOUT, must not add up to minutes on a host with many VMs.
GUEST_AGENT_WORKERS = 8
# libvirt's answers when the guest agent is missing, not connected or silent.
_NO_GUEST_AGENT = {libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_AGENT_UNSYNCED,
                   libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, libvirt.VIR_ERR_OPERATION_UNSUPPORTED}


def ask(dom: libvirt.virDomain) -> dict:
    """What qemu-guest-agent reports about the guest of ``dom`` (guest_agent.report's shape).

    A VM that is not running, has no guest-agent channel, or whose agent does
    not answer within GUEST_AGENT_TIMEOUT s: GuestAgentUnavailable.
    """
    vm_id = dom.UUIDString()
    if not is_active(dom):
        raise GuestAgentUnavailable(f"guest agent of VM {vm_id} not responding: the VM "
                                    "is not running", vm_id=vm_id)
    try:
        dom.agentSetResponseTimeout(GUEST_AGENT_TIMEOUT, 0)
        info = dom.guestInfo(0, 0)
        addresses = dom.interfaceAddresses(
            libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in _NO_GUEST_AGENT or not is_active(dom):
            raise GuestAgentUnavailable(f"guest agent of VM {vm_id} not responding: "
                                        f"{exc.get_error_message()}", vm_id=vm_id) from None
        raise LibvirtError(f"libvirt could not query the guest agent of VM {vm_id}: "
                           f"{exc.get_error_message()}", vm_id=vm_id,
                           libvirt_code=exc.get_error_code()) from None
    return {"id": vm_id, **guest_agent.report(info, addresses)}


def ask_all(vm_ids: list[str], ask_one: Callable[[str], dict]) -> dict:
    """``ask_one`` for every VM, a few at a time.

    The answer is {"guests": {id: report}, "unavailable": {id: why}}.

    The engine's VM poll asks once per host instead of once per VM (a request is
    a TLS handshake: 500 VMs took longer than the poll interval).
    """
    answer: dict = {"guests": {}, "unavailable": {}}
    if not vm_ids:
        return answer

    def ask_safely(vm_id: str) -> tuple[str, dict | None, str]:
        try:
            report = ask_one(vm_id)
        except (GuestAgentUnavailable, LibvirtError, VmNotFound) as err:
            return vm_id, None, err.message
        report.pop("id")
        return vm_id, report, ""

    with ThreadPoolExecutor(min(GUEST_AGENT_WORKERS, len(vm_ids)),
                            thread_name_prefix="guest-agent") as pool:
        for vm_id, report, why in pool.map(ask_safely, vm_ids):
            if report is None:
                answer["unavailable"][vm_id] = why
            else:
                answer["guests"][vm_id] = report
    return answer
