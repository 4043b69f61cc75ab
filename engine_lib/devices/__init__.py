"""Device matching: read a VM's live domain XML back and correlate it with the database.

- ``live``: parse the live XML's devices into flat records;
- ``match``: correlate them with the VM's device rows (pure, with reasons);
- ``apply``: write the correlation onto the rows.
"""

from __future__ import annotations

from engine_lib.devices.apply import apply
from engine_lib.devices.live import LiveDevice, parse, parse_devices
from engine_lib.devices.match import Correlation, correlate
from engine_lib.model import Vm

__all__ = ["Correlation", "LiveDevice", "apply", "correlate", "match_vm",
           "parse", "parse_devices", "record_live"]


def match_vm(vm: Vm, domain_xml: str) -> tuple[Correlation, list[tuple[str, str]]]:
    """Correlate and apply; returns the correlation and the audit notes."""
    correlation = correlate(vm.devices, parse_devices(domain_xml))
    return correlation, apply(vm, correlation)


def record_live(vm: Vm, domain_xml: str) -> list[tuple[str, str]]:
    """What the engine does with the live XML right after starting a VM."""
    return match_vm(vm, domain_xml)[1]
