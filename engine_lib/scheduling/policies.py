"""Cluster scheduling policies, as in oVirt: lists of units with factors, a balancer, parameters.

A cluster names one policy and may override its parameters (the
``scheduling_policy_properties`` of ``kestrel.virt.cluster``); ``resolve``
validates both and gives back the policy with the cluster's values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from engine_lib.protocol.errors import InvalidSpec

# Every policy runs these, in this order: cheap and decisive ones first, so the
# explanation names the most basic reason a host was removed.
COMMON_FILTERS = ("status", "pinned_hosts", "migration", "cpu", "memory", "cpu_model",
                  "emulated_machine", "network", "hooks", "hugepages", "host_affinity",
                  "vm_affinity")
AFFINITY_WEIGHTS = (("vm_affinity", 5.0), ("host_affinity", 5.0), ("preferred_hosts", 5.0))
# Added to every policy of a cluster with ha_reservation: it outweighs the load units
# together (at most 2), so keeping every host's HA VMs restartable wins over a better
# balanced host, but an administrator's soft affinity (5) still wins over it.
HA_RESERVATION_WEIGHT = ("ha_reservation", 3.0)


@dataclass(frozen=True)
class Parameter:
    name: str
    default: int
    minimum: int
    maximum: int
    description: str


P_HIGH = Parameter("high_utilization", 80, 1, 100,
                   "CPU load in percent above which a host is over-utilized")
P_LOW = Parameter("low_utilization", 20, 0, 99,
                  "CPU load in percent below which a host is under-utilized and emptied")
P_DURATION = Parameter("cpu_overcommit_duration_minutes", 2, 1, 1440,
                       "how long a host must stay past a CPU threshold before VMs move")
P_RESERVE = Parameter("hosts_in_reserve", 0, 0, 10000,
                      "empty hosts kept Up for new VMs rather than emptied further")
P_COOLDOWN = Parameter("vm_cooldown_minutes", 30, 0, 1440,
                       "minutes a VM stays put after a migration")
P_HIGH_VMS = Parameter("high_vm_count", 10, 1, 100000,
                       "VM count above which a host is over-utilized")
P_THRESHOLD = Parameter("migration_threshold", 5, 1, 100000,
                        "VM count difference between the fullest and the emptiest host that "
                        "starts a migration")
# oVirt's automatic host power management under power_saving (engine_lib.loop.power_saving).
P_AUTO_PM = Parameter("enable_automatic_host_power_management", 0, 0, 1,
                      "1: empty hosts beyond hosts_in_reserve go to maintenance and are powered "
                      "off through their power management, and on again when capacity is needed")
P_GRACE = Parameter("host_power_off_grace_minutes", 10, 0, 1440,
                    "minutes an emptied host waits in maintenance before it is powered off")


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    filters: tuple[str, ...]
    weights: tuple[tuple[str, float], ...]
    balancer: str | None
    parameters: tuple[Parameter, ...] = ()
    values: Mapping[str, int] = field(default_factory=dict)

    def param(self, name: str) -> int:
        return self.values.get(name, next(p.default for p in self.parameters if p.name == name))

    @property
    def params(self) -> dict[str, int]:
        return {p.name: self.param(p.name) for p in self.parameters}

    def with_properties(self, properties: Mapping[str, Any] | None,
                        field_name: str = "scheduling_policy_properties") -> Policy:
        """This policy with the cluster's parameter values; unknown or out-of-range is refused."""
        if not properties:
            return self
        known = {p.name: p for p in self.parameters}
        values = dict(self.values)
        for key, value in properties.items():
            parameter = known.get(key)
            if parameter is None:
                allowed = ", ".join(known) or "none"
                raise InvalidSpec(f"{field_name}.{key}",
                                  f"policy {self.name} has no such parameter (allowed: {allowed})")
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or not (
                    parameter.minimum <= value <= parameter.maximum):
                raise InvalidSpec(f"{field_name}.{key}", f"must be a whole number from "
                                  f"{parameter.minimum} to {parameter.maximum} (got {value!r})")
            values[key] = value
        return replace(self, values=values)

    def with_ha_reservation(self) -> Policy:
        """This policy as a cluster with HA reservation runs it."""
        if HA_RESERVATION_WEIGHT in self.weights:
            return self
        return replace(self, weights=self.weights + (HA_RESERVATION_WEIGHT,))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "filters": list(self.filters),
            "weights": [{"name": n, "factor": f} for n, f in self.weights],
            "balancer": self.balancer,
            "parameters": [{"name": p.name, "value": self.param(p.name), "default": p.default,
                            "minimum": p.minimum, "maximum": p.maximum,
                            "description": p.description} for p in self.parameters],
        }


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("none", "no balancing; new VMs go where CPU and memory are least used",
           COMMON_FILTERS, (("cpu_even", 1.0), ("memory_even", 1.0)) + AFFINITY_WEIGHTS, None),
    Policy("evenly_distributed", "spread CPU and memory load evenly; move VMs off hosts whose "
           "CPU stays above the high threshold",
           COMMON_FILTERS, (("cpu_even", 1.0), ("memory_even", 1.0)) + AFFINITY_WEIGHTS,
           "evenly_distributed", (P_HIGH, P_DURATION, P_COOLDOWN)),
    Policy("power_saving", "pack VMs on few hosts; empty hosts under the low threshold so they "
           "can be powered down, relieve hosts above the high one",
           COMMON_FILTERS, (("power_cpu", 1.0), ("power_memory", 1.0)) + AFFINITY_WEIGHTS,
           "power_saving", (P_LOW, P_HIGH, P_DURATION, P_RESERVE, P_COOLDOWN, P_AUTO_PM,
                            P_GRACE)),
    Policy("vm_evenly_distributed", "spread the number of VMs evenly across hosts",
           COMMON_FILTERS, (("vm_count_even", 1.0), ("memory_even", 0.5)) + AFFINITY_WEIGHTS,
           "vm_evenly_distributed", (P_HIGH_VMS, P_THRESHOLD)),
    Policy("cluster_maintenance", "the cluster is being serviced: only highly available VMs "
           "start, nothing is balanced",
           ("cluster_maintenance",) + COMMON_FILTERS,
           (("cpu_even", 1.0), ("memory_even", 1.0)) + AFFINITY_WEIGHTS, None),
)}
DEFAULT_POLICY = "none"


def resolve(name: str | None, properties: Mapping[str, Any] | None = None,
            field_name: str = "scheduling_policy", *, ha_reservation: bool = False) -> Policy:
    """The named policy with the cluster's properties (and, for a cluster with
    ha_reservation, the ha_reservation weight)."""
    policy = POLICIES.get(name or DEFAULT_POLICY)
    if policy is None:
        raise InvalidSpec(field_name, f"must be one of {', '.join(POLICIES)} (got {name!r})")
    policy = policy.with_properties(properties, f"{field_name}_properties")
    return policy.with_ha_reservation() if ha_reservation else policy
