"""Hosts: hypervisors whose agent the engine reaches over mutual TLS."""

from __future__ import annotations

import ipaddress

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import selectinload

from engine_lib.model import Cluster, Host, Vm
from engine_lib.protocol.errors import Conflict, InvalidSpec
from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.protocol.wire import AGENT_PORT
from engine_lib.services import access, host_keys, listing
from engine_lib.services.common import audit, find, get_cluster, retry_on_conflict
from engine_lib.services.fencing_settings import normalize_power_management
from engine_lib.services.host_deploy import HostDeploy
from engine_lib.services.host_records import host_dict, record_capabilities, redacted_pm
from engine_lib.services.maintenance import enter as enter_maintenance
from engine_lib.services.maintenance import leave as leave_maintenance
from engine_lib.services.results import Outcome
from engine_lib.services.revocation import revoke_host
from engine_lib.services.stats import with_statistics
from engine_lib.services.storage_domains import connect_host
from engine_lib.spec import HOSTNAME_RE, choice, positive_int, text
from engine_lib.spec import name as check_name


def _config(host: Host) -> dict:
    """The part of a host the user sets (what --diff compares)."""
    return {"cluster": host.cluster.name, "address": host.address, "port": host.port,
            "power_management": dict(host.power_management or {}),
            "soft_fence_command": host.soft_fence_command,
            "ssh_host_keys": host_keys.listed(host.ssh_host_keys)}


class HostService:
    def __init__(self, engine):
        self.engine = engine

    @retry_on_conflict
    def ensure(self, name: str, *, address: str, cluster: str, port: int = AGENT_PORT,
               power_management: dict | None = None, soft_fence_command: str | None = None,
               ssh_host_keys: list[str] | None = None, check_mode: bool = False) -> Outcome:
        check_name("name", name)
        text("address", address, 255)
        _check_address(address)
        positive_int("port", port, 65535)
        # None keeps what the host has; {} removes its power management.
        settings = _fencing_settings(power_management, soft_fence_command, self.engine.config)
        # None keeps the recorded keys (or records what the agent reports, the first time).
        if ssh_host_keys is not None:
            settings["ssh_host_keys"] = host_keys.normalize("ssh_host_keys", ssh_host_keys)
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
            for key, value in settings.items():
                setattr(host, key, value)
            record_capabilities(host, capabilities)
            session.flush()
            after = _config(host)
            changed = before != after
            if changed:
                audit(session, "host", name, "host added" if created else
                      f"host updated: {', '.join(k for k in after if before.get(k) != after[k])}")
            outcome = Outcome(changed, host_dict(host), {"before": _redacted(before),
                                                         "after": _redacted(after)})
        if not check_mode:
            connect_host(self.engine, name)  # an Up host mounts its cluster's NFS domains
        return outcome

    @staticmethod
    def _active_vms(session, host: Host) -> list[str]:
        return list(session.scalars(select(Vm.name).where(
            Vm.run_on_host_id == host.id, Vm.status.in_(VmStatus.ACTIVE))))

    @retry_on_conflict
    def remove(self, name: str, *, check_mode: bool = False) -> Outcome:
        """Forget the host and revoke its certificates (services.revocation).

        Revocation also runs for a name no longer registered (a host enrolled by
        the role but never added, or a removal interrupted after its commit)."""
        check_name("name", name)
        with self.engine.store.transaction(commit=not check_mode) as session:
            host = find(session, Host, name)
            before = None if host is None else _config(host)
            if host is not None:
                running = self._active_vms(session, host)
                if running:
                    raise Conflict(f"host '{name}' still runs {', '.join(running)}; stop or "
                                   "migrate them first", vms=running)
                access.forget_object(session, "host", host.id)
                session.delete(host)
                audit(session, "host", name, "host removed")
        if check_mode:
            return Outcome(before is not None, None,
                           None if before is None else {"before": before, "after": {}})
        revoked = revoke_host(self.engine, name)
        if before is None and not revoked:
            return Outcome(False, None, None)
        return Outcome(True, None, {"before": before or {}, "after": {}})

    def maintenance(self, name: str, *, check_mode: bool = False,
                    timeout: float = 600) -> Outcome:
        """Migrate every VM away, then hold the host in Maintenance (services.maintenance)."""
        return enter_maintenance(self.engine, name, check_mode=check_mode, timeout=timeout)

    def activate(self, name: str, *, check_mode: bool = False) -> Outcome:
        """End a maintenance: the host is Up again once its agent answers."""
        outcome = leave_maintenance(self.engine, name, check_mode=check_mode)
        if outcome.changed and not check_mode:
            connect_host(self.engine, name)  # its cluster's NFS domains
        return outcome

    def reinstall(self, name: str, *, force: bool = False, activate: bool = True,
                  renew_certificate: bool = False, enroll_certificate: bool = False,
                  ssh_host_keys: list[str] | None = None, timeout: float = 600,
                  check_mode: bool = False) -> Outcome:
        """Install the engine's agent build on the host again over SSH
        (services.host_deploy), then activate it."""
        return HostDeploy(self.engine).reinstall(
            name, force=force, activate=activate, renew_certificate=renew_certificate,
            enroll_certificate=enroll_certificate, ssh_host_keys=ssh_host_keys,
            timeout=timeout, check_mode=check_mode)

    def info(self, name: str | None = None, cluster: str | None = None) -> list[dict]:
        with self.engine.store.transaction(commit=False) as session:
            query = select(Host).options(selectinload(Host.cluster)).order_by(Host.name)
            if name:
                query = query.where(Host.name == name)
            if cluster:
                query = query.where(Host.cluster_id == get_cluster(session, cluster).id)
            return with_statistics(session, "host",
                                   [host_dict(h) for h in session.scalars(query)])

    def page(self, *, offset: int = 0, limit: int = listing.DEFAULT_LIMIT,
             name: str | None = None, cluster: str | None = None,
             status: str | None = None, visible: ColumnElement | None = None) -> dict:
        """One page of the hosts the caller may read, by name (services.listing)."""
        with self.engine.store.transaction(commit=False) as session:
            query = select(Host).options(selectinload(Host.cluster)).order_by(Host.name)
            if cluster is not None:
                query = query.where(listing.named(Host.cluster_id, Cluster, "cluster", cluster))
            if status is not None:
                status = choice("status", status, tuple(HostStatus))
            page = listing.page(session, query, to_dict=host_dict, offset=offset, limit=limit,
                                name=name, name_column=Host.name, status=status,
                                status_column=Host.status,
                                visible=listing.readable(session, "host", visible))
            with_statistics(session, "host", page["items"])
            return page


def _fencing_settings(power_management: dict | None, soft_fence_command: str | None,
                      config) -> dict:
    """The fencing columns to set, checked (None: keep the host's)."""
    settings = {}
    if power_management is not None:
        settings["power_management"] = normalize_power_management("power_management",
                                                                  power_management, config)
    if soft_fence_command is not None:
        if not isinstance(soft_fence_command, str) or not soft_fence_command.strip() \
                or "\n" in soft_fence_command:
            raise InvalidSpec("soft_fence_command", "must be one non-empty line: the command "
                              "that restarts the agent, run over SSH as root")
        settings["soft_fence_command"] = soft_fence_command.strip()
    return settings


def _redacted(config: dict) -> dict:
    return {**config, "power_management": redacted_pm(config.get("power_management"))} \
        if "power_management" in config else config


def _check_address(address: str) -> None:
    """An IP address or a DNS name: anything else could not be reached (and must not
    reach the agent client as a host name it cannot encode)."""
    if not address:
        raise InvalidSpec("address", "is required")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if not HOSTNAME_RE.match(address):
            raise InvalidSpec("address", f"'{address}' is neither an IP address nor a host "
                                         "name") from None
