"""The custom properties a cluster's VMs may set (oVirt's UserDefinedVMProperties).

An administrator lists them per cluster: each property name with a regular
expression its value must match in full. A VM may set no other property, and
none with another value: its properties reach hook scripts that run as root on
the hosts. A VM is checked when its properties or its cluster change, and
again at every start, since the list may have changed since; a VM whose
properties are no longer allowed does not start (nothing is dropped silently).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from engine_lib.model import Vm
from engine_lib.protocol import custom_properties as properties
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.spec import text

MAX_PROPERTIES = 256
MAX_PATTERN = 1024
_SHOWN_VALUE = 80  # characters of a refused value quoted back


def normalize_allowed(field: str, value: object) -> dict[str, str]:
    """A cluster's allow-list: property name -> the value's regular expression."""
    if not isinstance(value, dict):
        raise InvalidSpec(field, "must be a mapping of property names to regular expressions")
    if len(value) > MAX_PROPERTIES:
        raise InvalidSpec(field, f"allows at most {MAX_PROPERTIES} properties, "
                                 f"got {len(value)}")
    allowed = {}
    for name, pattern in value.items():
        if not properties.is_name(name):
            raise InvalidSpec(f"{field}.{name}", f"names are {properties.NAME_RULE}")
        pattern = text(f"{field}.{name}", pattern, MAX_PATTERN)
        try:
            re.compile(pattern)
        except re.error as exc:
            raise InvalidSpec(f"{field}.{name}",
                              f"is not a valid regular expression: {exc}") from None
        allowed[name] = pattern
    return allowed


def refusal(name: str, value: str, allowed: Mapping[str, str], cluster: str) -> str | None:
    """Why property ``name`` with ``value`` is not allowed in ``cluster``; None if it is."""
    if name not in allowed:
        listed = ", ".join(sorted(allowed)) or "none"
        return (f"is not allowed in cluster '{cluster}' (it allows: {listed}); an "
                f"administrator allows a property with the cluster's custom_properties")
    if re.fullmatch(allowed[name], value) is None:
        shown = value if len(value) <= _SHOWN_VALUE else value[:_SHOWN_VALUE] + "..."
        return (f"value {shown!r} does not match {allowed[name]!r}, the pattern cluster "
                f"'{cluster}' allows for it")
    return None


def check_vm(vm: Vm, *, starting: bool = False) -> None:
    """Refuse the VM's first property its cluster does not allow, naming it."""
    allowed = vm.cluster.custom_properties or {}
    for name, value in sorted((vm.custom_properties or {}).items()):
        reason = refusal(name, value, allowed, vm.cluster.name)
        if reason is not None:
            if starting:
                reason += (f"; VM '{vm.name}' does not start until the property is removed "
                           f"from it or allowed")
            raise InvalidSpec(f"custom_properties.{name}", reason)
