"""Logical networks: a cluster's named networks, each carried by a bridge on its hosts.

oVirt's rule, kept: a VM NIC attaches to a logical network, and the host
provides it as a bridge. A cluster with no logical networks keeps the older
rule (a NIC's ``network`` is the bridge name itself), so existing specs work;
once a cluster defines any, every new or changed NIC must name one of them.
A ``required`` network's bridge must exist on a host for any VM of the
cluster to be placed there (the scheduler's network filter).

VLAN and MTU describe how hosts build the bridge (a VLAN device under it, its
MTU): the VM's NIC is plugged into the bridge untagged, as in oVirt.
"""

from __future__ import annotations

import re

from sqlalchemy import select

from engine_lib.model import DeviceType, Host, LogicalNetwork, Vm, VmDevice
from engine_lib.protocol.errors import Conflict, InvalidSpec
from engine_lib.services.common import audit, get_cluster, retry_on_conflict
from engine_lib.services.results import Outcome
from engine_lib.spec import boolean, positive_int, text
from engine_lib.spec import name as check_name

# Linux interface names: at most 15 bytes, no '/', ':' or whitespace.
BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def network_dict(network: LogicalNetwork, cluster: str,
                 hosts: dict[str, list | None] | None = None) -> dict:
    out = {"name": network.name, "cluster": cluster, "description": network.description,
           "bridge": network.bridge, "vlan": network.vlan or None, "mtu": network.mtu or None,
           "required": network.required}
    if hosts is not None:
        # Host name -> whether its agent reports the bridge (None: not reported yet).
        out["hosts"] = {host: None if bridges is None else network.bridge in bridges
                        for host, bridges in sorted(hosts.items())}
    return out


def bridge_name(field: str, value) -> str:
    value = text(field, value, 15)
    if not BRIDGE_RE.match(value):
        raise InvalidSpec(field, "must be 1-15 letters, digits, '.', '_' or '-' (a Linux "
                                 f"interface name), got {value!r}")
    return value


def nic_users(session, cluster_id: str, network: str) -> list[str]:
    """Names of the VMs of the cluster with a NIC on ``network``."""
    rows = session.execute(select(Vm.name, VmDevice.spec).join(VmDevice).where(
        Vm.cluster_id == cluster_id, VmDevice.type == DeviceType.INTERFACE))
    return sorted({vm for vm, spec in rows if spec.get("network") == network})


class NetworkService:
    def __init__(self, engine):
        self.engine = engine

    @retry_on_conflict
    def ensure(self, name: str, *, cluster: str, bridge: str | None = None,
               vlan: int | None = None, mtu: int | None = None, required: bool | None = None,
               description: str | None = None, check_mode: bool = False) -> Outcome:
        """Create or update a network; options left None keep their value (a new
        network's bridge defaults to its name)."""
        check_name("name", name)
        wanted = {
            "bridge": None if bridge is None else bridge_name("bridge", bridge),
            # 0 clears VLAN and MTU.
            "vlan": None if vlan is None else (vlan and positive_int("vlan", vlan, 4094)),
            "mtu": None if mtu is None else (mtu and positive_int("mtu", mtu, 65535, 68)),
            "required": None if required is None else boolean("required", required),
            "description": None if description is None else text("description", description),
        }
        with self.engine.store.transaction(commit=not check_mode) as session:
            target = get_cluster(session, cluster)
            network = self._find(session, target.id, name)
            before = network_dict(network, cluster) if network else {}
            if network is None:
                network = LogicalNetwork(cluster_id=target.id, name=name, description="",
                                         bridge=wanted["bridge"] or bridge_name("name", name),
                                         vlan=0, mtu=0, required=False)
                session.add(network)
            old_bridge = network.bridge
            for key, value in wanted.items():
                if value is not None and getattr(network, key) != value:
                    setattr(network, key, value)
            if before and network.bridge != old_bridge:
                self._rebridge(session, target.id, name, network.bridge)
            session.flush()
            after = network_dict(network, cluster)
            changed = before != after
            if changed:
                audit(session, "cluster", cluster, f"network {name} "
                      f"{'updated' if before else 'created'}: bridge {network.bridge}"
                      f"{', required' if network.required else ''}")
            return Outcome(changed, after, {"before": before, "after": after})

    @staticmethod
    def _rebridge(session, cluster_id: str, network: str, bridge: str) -> None:
        """NICs on the network follow its new bridge (running VMs at their next start)."""
        devices = session.scalars(select(VmDevice).join(Vm).where(
            Vm.cluster_id == cluster_id, VmDevice.type == DeviceType.INTERFACE))
        for device in devices:
            if device.spec.get("network") == network and device.spec.get("bridge") != bridge:
                device.spec = {**device.spec, "bridge": bridge}

    @retry_on_conflict
    def remove(self, name: str, *, cluster: str, check_mode: bool = False) -> Outcome:
        with self.engine.store.transaction(commit=not check_mode) as session:
            target = get_cluster(session, cluster)
            network = self._find(session, target.id, name)
            if network is None:
                return Outcome(False, None, None)
            users = nic_users(session, target.id, name)
            if users:
                raise Conflict(f"network '{name}' is used by NICs of VM(s) {', '.join(users)}; "
                               "move or remove those NICs first", vms=users)
            before = network_dict(network, cluster)
            target.networks.remove(network)
            audit(session, "cluster", cluster, f"network {name} removed")
            return Outcome(True, None, {"before": before, "after": {}})

    def info(self, cluster: str, name: str | None = None) -> list[dict]:
        """The cluster's networks, each with which hosts report its bridge."""
        with self.engine.store.transaction(commit=False) as session:
            target = get_cluster(session, cluster)
            hosts = dict(session.execute(select(Host.name, Host.networks)
                                         .where(Host.cluster_id == target.id)).all())
            return [network_dict(n, cluster, hosts) for n in target.networks
                    if name is None or n.name == name]

    @staticmethod
    def _find(session, cluster_id: str, name: str) -> LogicalNetwork | None:
        return session.scalars(select(LogicalNetwork).where(
            LogicalNetwork.cluster_id == cluster_id, LogicalNetwork.name == name)).first()
