"""A host's row: how users see it, how the engine reaches it, what its agent's report sets.

Low in the services layer: the host service, maintenance, host deployment, the
storage, VM and migration services and the engine loop all use these, and none
of them may import another service to get them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import object_session

from engine_lib.model import HaReservationCheck, Host, utcnow
from engine_lib.protocol.statuses import HostStatus
from engine_lib.services import host_keys
from engine_lib.services.common import iso_utc


@dataclass(frozen=True)
class HostRef:
    """What the engine needs to reach a host once its transaction has ended."""

    name: str
    address: str
    port: int

    @classmethod
    def of(cls, host: Host | None) -> HostRef | None:
        return cls(host.name, host.address, host.port) if host else None


def host_dict(host: Host) -> dict:
    return {
        "id": host.id,
        "name": host.name,
        "cluster": host.cluster.name,
        "address": host.address,
        "port": host.port,
        "status": host.status,
        "hostname": host.hostname,
        "host_uuid": host.host_uuid,
        "cpus": host.cpus,
        "memory_mib": host.memory_mib,
        "libvirt_version": host.libvirt_version,
        "cpu_model": host.cpu_model,
        "machines": host.machines,
        "networks": host.networks,
        "hooks": host.hooks,
        "last_seen": host.last_seen.isoformat() if host.last_seen else None,
        # Fencing (see engine_lib.loop.fencing).
        "power_management": redacted_pm(host.power_management),
        "soft_fence_command": host.soft_fence_command,
        "fence_state": host.fence_state,
        # How far power saving got with the host (statuses.PowerSavingState; "" = not at all).
        "power_saving": host.power_saving,
        # What the agent serves from its storage domains, and the agent build the engine
        # last installed there (services.host_deploy).
        "storage_domains": host.storage_domains,
        "agent_version": host.agent_version,
        "agent_wheel_sha256": host.agent_wheel_sha256,
        "agent_installed_at": host.agent_installed_at.isoformat()
        if host.agent_installed_at else None,
        "install_error": host.install_error,
        # What every SSH login to the host accepts (services.host_keys).
        "ssh_host_keys": host_keys.listed(host.ssh_host_keys),
        "ha_reservation": ha_reservation_of(host),
    }


def ha_reservation_of(host: Host) -> dict:
    """Whether the host's cluster keeps an HA reservation, and whether, at the engine
    loop's last check (engine_lib.loop.ha_reservation), this host's HA VMs could restart
    on the others (None: the option is off or no check ran yet)."""
    cluster = host.cluster
    session = object_session(host)
    check = session.get(HaReservationCheck, cluster.id) \
        if session is not None and cluster.ha_reservation else None
    return {"enabled": bool(cluster.ha_reservation),
            "ok": None if check is None else host.name not in (check.detail or {}).get("hosts", []),
            "checked_at": None if check is None else iso_utc(check.checked_at)}


def redacted_pm(power_management: dict | None) -> dict:
    """Power management as shown to users: fence device passwords never leave the engine."""
    pm = dict(power_management or {})
    if pm.get("options"):
        pm["options"] = {key: "********" if "pass" in key.lower() else value
                         for key, value in pm["options"].items()}
    return pm


def record_capabilities(host: Host, caps: dict, now=None) -> None:
    """Store what the agent reported; an answer means the host is Up."""
    # `or ""`: an agent reports null for what libvirt does not know (a host
    # without a UUID in its capabilities), and these columns are NOT NULL.
    host.hostname = caps.get("hostname") or ""
    host.host_uuid = caps.get("host_uuid") or ""
    host.cpus = int(caps.get("cpus", 0))
    host.memory_mib = int(caps.get("memory_mib", 0))
    host.libvirt_version = str(caps.get("libvirt_version", ""))
    # Facts the scheduler filters on; None (not reported) filters nothing.
    host.cpu_model = caps.get("cpu_model") or None
    host.machines = caps.get("machines")
    host.networks = caps.get("networks")
    host.hooks = caps.get("hooks")
    host.storage_domains = caps.get("storage_domains")
    host.hugepages = caps.get("hugepages") or {}
    host.used_memory_mib = int(caps.get("used_memory_mib", 0))
    if not host.ssh_host_keys:  # recorded once, over mutual TLS; only the operator changes them
        host.ssh_host_keys = host_keys.reported(caps)
    if host.status not in HostStatus.HELD:  # only `activate` ends a maintenance
        host.status = HostStatus.UP
    host.last_seen = now or utcnow()
