"""Offline simulation: hosts and VM specs from files in, one decision per VM out.

``kestrel schedule`` reads a hosts file and a VMs file (VM specs, the keys of
``kestrel.virt.vm``) and places the VMs in order, each placement claiming its
resources before the next one is decided, as the engine does. Only the VM keys
the scheduler needs are read here, so the spec can grow without this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.scheduling.placement import place
from engine_lib.scheduling.policies import Policy
from engine_lib.scheduling.state import VM_RULES, AffinityGroup, Context, HostState, VmRequest
from engine_lib.scheduling.table import HostTable
from engine_lib.spec import boolean, choice, positive_int, text
from engine_lib.spec import name as check_name
from engine_lib.units import size_mib

HOST_STATUSES = {"up": "Up", "maintenance": "Maintenance", "non_responsive": "NonResponsive"}
HOST_KEYS = ("name", "cpus", "memory", "status", "networks", "used_memory", "used_cpu_percent",
             "cpu_model", "hooks", "machines", "hugepages", "memory_overcommit")
GROUP_KEYS = ("name", "vm_rule", "vm_enforcing", "host_rule", "host_enforcing", "hosts")


def _mapping(field: str, value: Any, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidSpec(field, f"must be a mapping, got {type(value).__name__}")
    if allowed:
        for key in value:
            if key not in allowed:
                raise InvalidSpec(f"{field}.{key}", f"unknown key (allowed: {', '.join(allowed)})")
    return value


def _names(field: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise InvalidSpec(field, f"must be a list of names, got {type(value).__name__}")
    return frozenset(check_name(f"{field}[{i}]", v) for i, v in enumerate(value))


def _size_or_zero(field: str, value: Any) -> int:
    return 0 if value in (0, "0") else size_mib(field, value)


def _page_kib(field: str, value: Any) -> int:
    if value is True:
        return 2048
    if isinstance(value, str) and value.strip().lower().endswith(("kib", "k")) \
            and value.strip().rstrip("KkiIBb").isdigit():
        return int(value.strip().rstrip("KkiIBb"))
    return size_mib(field, value) * 1024


def parse_host(field: str, entry: Any) -> HostState:
    entry = _mapping(field, entry, HOST_KEYS)
    for required in ("name", "cpus", "memory", "status", "networks"):
        if required not in entry:
            raise InvalidSpec(f"{field}.{required}", "is required")
    used_cpu = entry.get("used_cpu_percent", 0)
    if isinstance(used_cpu, bool) or not isinstance(used_cpu, (int, float)) or not 0 <= used_cpu <= 100:
        raise InvalidSpec(f"{field}.used_cpu_percent", f"must be a number from 0 to 100 (got {used_cpu!r})")
    pages = _mapping(f"{field}.hugepages", entry.get("hugepages", {}))
    hugepages = {}
    for size, free in pages.items():
        if isinstance(free, bool) or not isinstance(free, int) or free < 0:
            raise InvalidSpec(f"{field}.hugepages.{size}", f"must be a count of free pages (got {free!r})")
        hugepages[_page_kib(f"{field}.hugepages.{size}", size)] = free
    return HostState(
        name=check_name(f"{field}.name", entry["name"]),
        status=HOST_STATUSES[choice(f"{field}.status", entry["status"], tuple(HOST_STATUSES))],
        cpus=positive_int(f"{field}.cpus", entry["cpus"], 100000),
        memory_mib=size_mib(f"{field}.memory", entry["memory"]),
        overcommit_percent=positive_int(f"{field}.memory_overcommit",
                                        entry.get("memory_overcommit", 100), 10000),
        used_memory_mib=_size_or_zero(f"{field}.used_memory", entry.get("used_memory", 0)),
        used_cpu_percent=float(used_cpu),
        cpu_model=text(f"{field}.cpu_model", entry["cpu_model"], 64) if entry.get("cpu_model") else None,
        machines=_names(f"{field}.machines", entry["machines"]) if "machines" in entry else None,
        networks=_names(f"{field}.networks", entry["networks"]),
        hooks=_names(f"{field}.hooks", entry.get("hooks", [])),
        hugepages_free=hugepages,
    )


def parse_vm(field: str, spec: Any) -> VmRequest:
    """The scheduler's view of a VM spec (sizes through engine_lib.units)."""
    spec = _mapping(field, spec)
    if "name" not in spec:
        raise InvalidSpec(f"{field}.name", "is required")
    cpu = _mapping(f"{field}.cpu", spec.get("cpu", {}))
    vcpus = 1
    for key in ("sockets", "cores", "threads"):
        vcpus *= positive_int(f"{field}.cpu.{key}", cpu.get(key, 1), 256)
    memory = size_mib(f"{field}.memory", spec.get("memory", 1024))
    nics = spec.get("nics", [])
    if not isinstance(nics, list):
        raise InvalidSpec(f"{field}.nics", "must be a list")
    networks = frozenset(check_name(f"{field}.nics[{i}].network", _mapping(f"{field}.nics[{i}]", n)
                                    .get("network")) for i, n in enumerate(nics))
    placement = _mapping(f"{field}.placement", spec.get("placement") or {})
    ha = spec.get("high_availability") or {}
    ha_enabled = (ha if isinstance(ha, bool)
                  else _mapping(f"{field}.high_availability", ha).get("enabled", False))
    hugepages = spec.get("hugepages")
    if isinstance(hugepages, dict):
        hugepages = hugepages.get("size", hugepages.get("page_size", True))
    guaranteed = spec.get("memory_guaranteed")
    return VmRequest(
        name=check_name(f"{field}.name", spec["name"]),
        vcpus=vcpus,
        memory_mib=memory,
        guaranteed_mib=(None if guaranteed is None
                        else _size_or_zero(f"{field}.memory_guaranteed", guaranteed)),
        machine=(choice(f"{field}.machine", spec["machine"], ("pc", "q35"))
                 if spec.get("machine") else None),
        cpu_model=text(f"{field}.cpu.model", cpu["model"], 64) if cpu.get("model") else None,
        networks=networks,
        hooks=frozenset(_mapping(f"{field}.custom_properties", spec.get("custom_properties") or {})),
        pinned_hosts=tuple(sorted(_names(f"{field}.placement.hosts", placement.get("hosts", [])))),
        affinity_groups=tuple(sorted(_names(f"{field}.placement.affinity_groups",
                                            placement.get("affinity_groups", [])))),
        hugepage_kib=_page_kib(f"{field}.hugepages", hugepages) if hugepages else None,
        highly_available=boolean(f"{field}.high_availability.enabled", ha_enabled),
    )


def parse_group(field: str, entry: Any) -> AffinityGroup:
    entry = _mapping(field, entry, GROUP_KEYS)
    if "name" not in entry:
        raise InvalidSpec(f"{field}.name", "is required")
    return AffinityGroup(
        name=check_name(f"{field}.name", entry["name"]),
        vm_rule=choice(f"{field}.vm_rule", entry.get("vm_rule", "disabled"), VM_RULES),
        vm_enforcing=boolean(f"{field}.vm_enforcing", entry.get("vm_enforcing", True)),
        host_rule=choice(f"{field}.host_rule", entry.get("host_rule", "disabled"), VM_RULES),
        host_enforcing=boolean(f"{field}.host_enforcing", entry.get("host_enforcing", True)),
        hosts=tuple(sorted(_names(f"{field}.hosts", entry.get("hosts", [])))),
    )


def _entries(field: str, data: Any) -> list[Any]:
    if data is None or data == ():
        return []
    if isinstance(data, dict) and field in data:
        data = data[field]
    if not isinstance(data, list):
        raise InvalidSpec(field, f"must be a list of {field} (or a mapping with a '{field}' list)")
    return data


def simulate(hosts: Iterable[Any], vms: Iterable[Any], policy: Policy,
             groups: Iterable[Any] = ()) -> list[dict[str, Any]]:
    """Place ``vms`` in order on ``hosts``; one {vm, host, explanation} per VM."""
    host_states = [parse_host(f"hosts[{i}]", h) for i, h in enumerate(_entries("hosts", hosts))]
    seen: set[str] = set()
    for i, host in enumerate(host_states):
        if host.name in seen:
            raise InvalidSpec(f"hosts[{i}].name", f"duplicate host '{host.name}'")
        seen.add(host.name)
    requests = [parse_vm(f"vms[{i}]", v) for i, v in enumerate(_entries("vms", vms))]
    context = Context(parse_group(f"affinity_groups[{i}]", g)
                      for i, g in enumerate(_entries("affinity_groups", groups)))
    for i, vm in enumerate(requests):
        for j, group in enumerate(vm.affinity_groups):
            if group not in context.groups:
                raise InvalidSpec(f"vms[{i}].placement.affinity_groups[{j}]",
                                  f"unknown affinity group '{group}'")
    table = HostTable(host_states)
    results = []
    for vm in requests:
        decision = place(vm, table, policy, context)
        if decision.host is not None and decision.host_index is not None:  # set together
            table.claim(decision.host_index, vm)
            context.record(vm.name, decision.host, vm.affinity_groups)
        results.append({"vm": vm.name, "host": decision.host, "explanation": decision.explain()})
    return results
