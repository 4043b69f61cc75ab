"""The VM spec users write, validated at the boundary.

``normalize_vm`` checks a (possibly partial) spec and returns it in canonical
form: sizes in MiB, defaults filled in for the sub-objects that were given,
unknown keys refused. Keys the user did not give stay absent, so a partial
spec updates only what it names. Every error names the field path
("disks[1].size") and the reason.
"""

from __future__ import annotations

import re
from typing import Any

import netaddr

from engine_lib.errors import InvalidSpec
from engine_lib.units import size_mib

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PROPERTY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# XML 1.0 cannot carry these at all, escaped or not.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

MACHINES = ("pc", "q35")
DISK_FORMATS = ("qcow2", "raw")
DISK_INTERFACES = ("virtio", "sata", "scsi")
NIC_MODELS = ("virtio", "e1000", "rtl8139")

VM_KEYS = ("name", "cluster", "description", "memory", "cpu", "machine", "kernel", "initrd",
           "cmdline", "disks", "nics", "serial_console", "custom_properties")


def name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidSpec(field, "must be 1-64 characters: letters, digits, '.', '_' or '-', "
                                 f"starting with a letter or digit (got {value!r})")
    return value


def text(field: str, value: Any, max_len: int = 4096) -> str:
    if not isinstance(value, str):
        raise InvalidSpec(field, f"must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise InvalidSpec(field, f"is longer than {max_len} characters")
    bad = _XML_FORBIDDEN.search(value)
    if bad:
        raise InvalidSpec(field, f"contains the control character U+{ord(bad.group()):04X}")
    return value


def choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidSpec(field, f"must be one of {', '.join(choices)} (got {value!r})")
    return value


def boolean(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpec(field, f"must be true or false (got {value!r})")
    return value


def positive_int(field: str, value: Any, maximum: int = 1024) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidSpec(field, f"must be a whole number from 1 to {maximum} (got {value!r})")
    return value


def mac(field: str, value: Any) -> str:
    try:
        eui = netaddr.EUI(value)
    except (netaddr.AddrFormatError, TypeError, ValueError):
        raise InvalidSpec(field, f"'{value}' is not a MAC address") from None
    if int(eui) >> 40 & 1:
        raise InvalidSpec(field, f"'{value}' is a multicast address")
    return str(eui).replace("-", ":").lower()


def _mapping(field: str, value: Any, allowed: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise InvalidSpec(field, f"must be a mapping, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise InvalidSpec(f"{field}.{key}" if field else key,
                              f"unknown key (allowed: {', '.join(allowed)})")
    return value


def boot_file(field: str, value: Any) -> str:
    """A kernel or initrd: 'domain:relative/path' on a storage domain, or an absolute host path."""
    value = text(field, value, 1024)
    if value.startswith("/"):
        return value
    domain, sep, path = value.partition(":")
    if not sep or not domain or not path:
        raise InvalidSpec(field, "must be '<storage domain>:<path>' or an absolute path "
                                 f"(got {value!r})")
    name(field, domain)
    if path.startswith("/") or ".." in path.split("/"):
        raise InvalidSpec(field, f"path '{path}' must be relative and stay inside the storage domain")
    return value


def _unique(field: str, items: list[dict], key: str) -> None:
    seen: set = set()
    for index, item in enumerate(items):
        value = item.get(key)
        if value is not None and value in seen:
            raise InvalidSpec(f"{field}[{index}].{key}", f"duplicate {key} '{value}'")
        seen.add(value)


def _list(field: str, value: Any) -> list:
    if not isinstance(value, list):
        raise InvalidSpec(field, f"must be a list, got {type(value).__name__}")
    return value


DISK_KEYS = ("name", "size", "format", "interface", "storage_domain", "bootable")


def disk(field: str, value: Any) -> dict:
    _mapping(field, value, DISK_KEYS)
    for required in ("name", "size", "storage_domain"):
        if required not in value:
            raise InvalidSpec(f"{field}.{required}", "is required")
    return {
        "name": name(f"{field}.name", value["name"]),
        "size_mib": size_mib(f"{field}.size", value["size"]),
        "format": choice(f"{field}.format", value.get("format", "qcow2"), DISK_FORMATS),
        "interface": choice(f"{field}.interface", value.get("interface", "virtio"), DISK_INTERFACES),
        "storage_domain": name(f"{field}.storage_domain", value["storage_domain"]),
        "bootable": boolean(f"{field}.bootable", value.get("bootable", False)),
    }


NIC_KEYS = ("name", "network", "mac", "model")


def nic(field: str, value: Any) -> dict:
    _mapping(field, value, NIC_KEYS)
    for required in ("name", "network"):
        if required not in value:
            raise InvalidSpec(f"{field}.{required}", "is required")
    result = {
        "name": name(f"{field}.name", value["name"]),
        "network": name(f"{field}.network", value["network"]),
        "model": choice(f"{field}.model", value.get("model", "virtio"), NIC_MODELS),
    }
    if value.get("mac") is not None:
        result["mac"] = mac(f"{field}.mac", value["mac"])
    return result


def normalize_vm(spec: Any) -> dict:
    """Validate a VM spec; return the canonical form of the keys it gives."""
    spec = _mapping("", spec, VM_KEYS)
    if "name" not in spec:
        raise InvalidSpec("name", "is required")
    out: dict[str, Any] = {"name": name("name", spec["name"])}
    if "cluster" in spec:
        out["cluster"] = name("cluster", spec["cluster"])
    if "description" in spec:
        out["description"] = text("description", spec["description"])
    if "memory" in spec:
        out["memory_mib"] = size_mib("memory", spec["memory"])
    if "cpu" in spec:
        cpu = _mapping("cpu", spec["cpu"], ("sockets", "cores", "threads"))
        out["cpu"] = {key: positive_int(f"cpu.{key}", cpu.get(key, 1), 256)
                      for key in ("sockets", "cores", "threads")}
    if "machine" in spec:
        out["machine"] = choice("machine", spec["machine"], MACHINES)
    for key in ("kernel", "initrd"):
        if key in spec:
            out[key] = boot_file(key, spec[key]) if spec[key] else ""
    if "cmdline" in spec:
        out["cmdline"] = text("cmdline", spec["cmdline"], 2048)
    if "disks" in spec:
        out["disks"] = [disk(f"disks[{i}]", d) for i, d in enumerate(_list("disks", spec["disks"]))]
        _unique("disks", out["disks"], "name")
    if "nics" in spec:
        out["nics"] = [nic(f"nics[{i}]", n) for i, n in enumerate(_list("nics", spec["nics"]))]
        _unique("nics", out["nics"], "name")
        _unique("nics", out["nics"], "mac")
    if "serial_console" in spec:
        out["serial_console"] = boolean("serial_console", spec["serial_console"])
    if "custom_properties" in spec:
        props = spec["custom_properties"]
        if not isinstance(props, dict):
            raise InvalidSpec("custom_properties", "must be a mapping of names to strings")
        out["custom_properties"] = {}
        for key, value in props.items():
            if not isinstance(key, str) or not PROPERTY_RE.match(key):
                raise InvalidSpec(f"custom_properties.{key}",
                                  "names are letters, digits and '_', not starting with a digit")
            out["custom_properties"][key] = text(f"custom_properties.{key}", str(value))
    return out
