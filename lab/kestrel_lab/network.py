"""The lab network: one bridge in the root namespace, one veth per host.

    root namespace                      host hN (network namespace "hN")
    kestrel-lab0 10.77.0.254/24 ── klab-hN ══ eth0 ── kestrelmgmt 10.77.0.N/24

Inside each host the veth end sits in a bridge named ``kestrelmgmt`` that
carries the host's address, the way oVirt hosts carry ovirtmgmt, so VM NICs
attach to that bridge. Nothing routes or NATs out of 10.77.0.0/24.
"""

from __future__ import annotations

import json
import os

from kestrel_lab.errors import LabError
from kestrel_lab.process import run

BRIDGE = "kestrel-lab0"
HOST_BRIDGE = "kestrelmgmt"
HOST_NIC = "eth0"
SUBNET_PREFIX = "10.77.0."
PREFIX_LENGTH = 24
GATEWAY = SUBNET_PREFIX + "254"
MAX_HOSTS = 253


def address(index: int) -> str:
    """Host ``index`` (1-based) has address 10.77.0.<index>."""
    if not 1 <= index <= MAX_HOSTS:
        raise LabError(f"host index {index} outside 1..{MAX_HOSTS}")
    return f"{SUBNET_PREFIX}{index}"


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


def _veth(name: str) -> str:
    return f"klab-{name}"


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def ensure_bridge() -> None:
    """Create the root-namespace bridge with the engine-side address (idempotent)."""
    if not _link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addresses = json.loads(run(["ip", "-j", "addr", "show", "dev", BRIDGE]).stdout)
    present = {info["local"] for link in addresses for info in link.get("addr_info", [])}
    if GATEWAY not in present:
        run(["ip", "addr", "add", f"{GATEWAY}/{PREFIX_LENGTH}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def remove_bridge() -> None:
    if _link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE])


def create_host(name: str, index: int) -> None:
    """Create the host's network namespace, wired to the lab bridge, addressed and routed."""
    run(["ip", "netns", "add", name], host=name)
    run(["ip", "link", "add", _veth(name), "type", "veth",
         "peer", "name", HOST_NIC, "netns", name], host=name)
    run(["ip", "link", "set", _veth(name), "master", BRIDGE, "up"], host=name)
    commands = "\n".join([
        "link set lo up",
        f"link add {HOST_BRIDGE} type bridge",
        f"link set {HOST_NIC} master {HOST_BRIDGE} up",
        f"addr add {address(index)}/{PREFIX_LENGTH} dev {HOST_BRIDGE}",
        f"link set {HOST_BRIDGE} up",
        f"route add default via {GATEWAY}",
    ])
    run(["ip", "-netns", name, "-batch", "-"], host=name, input=commands + "\n")


def remove_host(name: str) -> None:
    """Remove the veth pair and the namespace; quiet when they are already gone."""
    if _link_exists(_veth(name)):
        run(["ip", "link", "del", _veth(name)], host=name)
    if os.path.exists(netns_path(name)):
        run(["ip", "netns", "del", name], host=name)
