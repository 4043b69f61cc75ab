"""Hosts: hypervisors whose agent the engine reaches over mutual TLS."""

from __future__ import annotations

from sqlalchemy import select

from engine_lib.engine import Outcome
from engine_lib.model import Host, Vm, utcnow
from engine_lib.protocol.errors import Conflict, InvalidSpec
from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.protocol.wire import AGENT_PORT
from engine_lib.services.common import audit, find, get_cluster, retry_on_conflict
from engine_lib.spec import name as check_name
from engine_lib.spec import positive_int, text


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
        # Issue 8: fencing (see engine_lib.loop.fencing).
        "power_management": _redacted_pm(host.power_management),
        "soft_fence_command": host.soft_fence_command,
        "fence_state": host.fence_state,
        # Issue 9: what the agent serves from its storage domains, and the agent build the
        # engine last installed there (services.host_deploy).
        "storage_domains": host.storage_domains,
        "agent_version": host.agent_version,
        "agent_wheel_sha256": host.agent_wheel_sha256,
        "agent_installed_at": host.agent_installed_at.isoformat()
        if host.agent_installed_at else None,
        "install_error": host.install_error,
    }


def _config(host: Host) -> dict:
    """The part of a host the user sets (what --diff compares)."""
    return {"cluster": host.cluster.name, "address": host.address, "port": host.port,
            "power_management": dict(host.power_management or {}),
            "soft_fence_command": host.soft_fence_command}


class HostService:
    def __init__(self, engine):
        self.engine = engine

    @retry_on_conflict
    def ensure(self, name: str, *, address: str, cluster: str, port: int = AGENT_PORT,
               power_management: dict | None = None, soft_fence_command: str | None = None,
               check_mode: bool = False) -> Outcome:
        check_name("name", name)
        text("address", address, 255)
        if not address:
            raise InvalidSpec("address", "is required")
        positive_int("port", port, 65535)
        # Issue 8: None keeps what the host has; {} removes its power management.
        fencing = _fencing_settings(power_management, soft_fence_command)
        # Reach the agent before writing anything: a host the engine cannot
        # talk to is not registered at all (AgentUnreachable, CertificateError).
        capabilities = self.engine.agent(address, port).host_info()
        with self.engine.store.transaction(commit=not check_mode) as session:
            target_cluster = get_cluster(session, cluster)
            host = find(session, Host, name)
            created = host is None
            before = {} if created else _config(host)
            if created:
                host = Host(name=name, cluster=target_cluster, address=address, port=port)
                session.add(host)
            elif host.cluster_id != target_cluster.id and self._active_vms(session, host):
                raise Conflict(f"host '{name}' runs VMs; it cannot move to cluster '{cluster}'")
            else:
                host.cluster, host.address, host.port = target_cluster, address, port
            for key, value in fencing.items():
                setattr(host, key, value)
            self.record_capabilities(host, capabilities)
            session.flush()
            after = _config(host)
            changed = before != after
            if changed:
                audit(session, "host", name, "host added" if created else
                      f"host updated: {', '.join(k for k in after if before.get(k) != after[k])}")
            outcome = Outcome(changed, host_dict(host), {"before": _redacted(before),
                                                         "after": _redacted(after)})
        if not check_mode:
            from engine_lib.services.storage_domains import connect_host

            connect_host(self.engine, name)  # issue 9: an Up host mounts its cluster's NFS domains
        return outcome

    @staticmethod
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
        if host.status not in HostStatus.HELD:  # only `activate` ends a maintenance
            host.status = HostStatus.UP
        host.last_seen = now or utcnow()

    @staticmethod
    def _active_vms(session, host: Host) -> list[str]:
        return list(session.scalars(select(Vm.name).where(
            Vm.run_on_host_id == host.id, Vm.status.in_(VmStatus.ACTIVE))))

    @retry_on_conflict
    def remove(self, name: str, *, check_mode: bool = False) -> Outcome:
        with self.engine.store.transaction(commit=not check_mode) as session:
            host = find(session, Host, name)
            if host is None:
                return Outcome(False, None, None)
            running = self._active_vms(session, host)
            if running:
                raise Conflict(f"host '{name}' still runs {', '.join(running)}; stop or migrate "
                               "them first", vms=running)
            before = _config(host)
            session.delete(host)
            audit(session, "host", name, "host removed")
            return Outcome(True, None, {"before": before, "after": {}})

    def maintenance(self, name: str, *, check_mode: bool = False,
                    timeout: float = 600) -> Outcome:
        """Migrate every VM away, then hold the host in Maintenance (services.maintenance)."""
        from engine_lib.services.maintenance import enter

        return enter(self.engine, name, check_mode=check_mode, timeout=timeout)

    def activate(self, name: str, *, check_mode: bool = False) -> Outcome:
        """End a maintenance: the host is Up again once its agent answers."""
        from engine_lib.services.maintenance import leave
        from engine_lib.services.storage_domains import connect_host

        outcome = leave(self.engine, name, check_mode=check_mode)
        if outcome.changed and not check_mode:
            connect_host(self.engine, name)  # issue 9: its cluster's NFS domains
        return outcome

    def reinstall(self, name: str, *, force: bool = False, activate: bool = True,
                  renew_certificate: bool = False, timeout: float = 600,
                  check_mode: bool = False) -> Outcome:
        """Issue 9: install the engine's agent build on the host again over SSH
        (services.host_deploy), then activate it."""
        from engine_lib.services.host_deploy import HostDeploy

        return HostDeploy(self.engine).reinstall(
            name, force=force, activate=activate, renew_certificate=renew_certificate,
            timeout=timeout, check_mode=check_mode)

    def info(self, name: str | None = None, cluster: str | None = None) -> list[dict]:
        with self.engine.store.transaction(commit=False) as session:
            query = select(Host).order_by(Host.name)
            if name:
                query = query.where(Host.name == name)
            if cluster:
                query = query.where(Host.cluster_id == get_cluster(session, cluster).id)
            return [host_dict(h) for h in session.scalars(query)]


def _fencing_settings(power_management: dict | None, soft_fence_command: str | None) -> dict:
    """Issue 8: the fencing columns to set, checked (None: keep the host's)."""
    from engine_lib.loop.fencing import normalize_power_management

    settings = {}
    if power_management is not None:
        settings["power_management"] = normalize_power_management("power_management",
                                                                  power_management)
    if soft_fence_command is not None:
        if not isinstance(soft_fence_command, str) or not soft_fence_command.strip() \
                or "\n" in soft_fence_command:
            raise InvalidSpec("soft_fence_command", "must be one non-empty line: the command "
                              "that restarts the agent, run over SSH as root")
        settings["soft_fence_command"] = soft_fence_command.strip()
    return settings


def _redacted_pm(power_management: dict | None) -> dict:
    """Power management as shown to users: fence device passwords never leave the engine."""
    pm = dict(power_management or {})
    if pm.get("options"):
        pm["options"] = {key: "********" if "pass" in key.lower() else value
                         for key, value in pm["options"].items()}
    return pm


def _redacted(config: dict) -> dict:
    return {**config, "power_management": _redacted_pm(config.get("power_management"))} \
        if "power_management" in config else config
