"""The VM spec users write, validated at the boundary.

``normalize_vm`` checks a (possibly partial) spec and returns it in canonical
form: sizes in MiB, defaults filled in for the sub-objects that were given,
unknown keys refused. Keys the user did not give stay absent, so a partial
spec updates only what it names. Every error names the field path
("disks[1].size") and the reason.

Checks that need the whole VM (a boot order used twice across disks and NICs,
more vCPUs than ``cpu.max_vcpus`` when only one of them changes) run again on
the merged VM in ``engine_lib.services.vm_config``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import netaddr

from engine_lib.protocol import custom_properties as properties
from engine_lib.protocol import placeholders
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.units import size_mib

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SERIAL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,20}$")
# A registered LUN's name or WWID (engine_lib.services.luns); never a host path.
LUN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# Disk image directories on a storage domain: the engine's volumes, never a boot file.
IMAGE_DIR_RE = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
SSH_KEY_RE = re.compile(r"^(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp(256|384|521)|"
                        r"sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/=]+( [^\n]*)?$")
# XML 1.0 cannot carry these at all, escaped or not.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")

MACHINES = ("pc", "q35")
FIRMWARES = ("bios", "uefi")
CPU_MODES = ("host-model", "host-passthrough", "custom")
DISK_FORMATS = ("qcow2", "raw")
DISK_INTERFACES = ("virtio", "sata", "scsi")
DISK_CACHES = ("default", "none", "writethrough", "writeback", "directsync", "unsafe")
DISK_IO = ("default", "native", "threads", "io_uring")
DISK_DISCARD = ("ignore", "unmap")
IOTUNE_KEYS = ("total_bytes_sec", "read_bytes_sec", "write_bytes_sec",
               "total_iops_sec", "read_iops_sec", "write_iops_sec")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139")
LINK_STATES = ("up", "down")
GRAPHICS = ("vnc", "spice")
VIDEO_MODELS = ("virtio", "qxl", "vga", "bochs", "ramfb")
RNG_SOURCES = {"urandom": "/dev/urandom", "random": "/dev/random", "hwrng": "/dev/hwrng"}
# (itco needs libvirt 9.1; Debian 12 ships 9.0.)
WATCHDOG_MODELS = ("i6300esb", "ib700")
WATCHDOG_ACTIONS = ("reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi")
TPM_MODELS = ("tpm-crb", "tpm-tis")
TPM_VERSIONS = ("2.0", "1.2")
# Page sizes x86_64 hosts offer, in KiB.
HUGEPAGE_KIB = {"2MiB": 2048, "1GiB": 1048576}
MAX_BOOT_ORDER = 64
HA_PRIORITY_MAX = 100
# The shape any spec must keep (checked before anything else walks or serializes it):
# nesting, items per list or mapping, values and string characters in all.
MAX_DEPTH = 16
MAX_ITEMS = 1024
MAX_VALUES = 50_000
MAX_CHARS = 4 * 1024 * 1024

VM_KEYS = ("name", "cluster", "description", "memory", "max_memory", "cpu", "machine",
           "firmware", "numa", "hugepages", "kernel", "initrd", "cmdline", "disks", "cdrom",
           "nics", "graphics", "video", "serial_console", "guest_agent", "rng", "watchdog",
           "balloon", "tpm", "cloud_init", "launch_paused", "custom_properties",
           "high_availability", "placement", "tags")
# Where a new VM comes from (used at creation only, never rendered): a template version,
# thin or cloned, a stopped VM to clone (oVirt's snapshot_vm), or one of its snapshots
# (by description, as ovirt_vm's snapshot_name, or by id).
ORIGIN_KEYS = ("template", "template_version", "clone", "snapshot_vm", "snapshot_name",
               "snapshot_id")


# -- scalar checks ----------------------------------------------------------------------------

def name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidSpec(field, "must be 1-64 characters: letters, digits, '.', '_' or '-', "
                                 f"starting with a letter or digit (got {value!r})")
    return value


def object_id(field: str, value: Any) -> str:
    """A row id (a UUID string, as the engine makes them)."""
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) and len(value) == 36 else \
            _bad_id(field, value)
    except ValueError:
        return _bad_id(field, value)


def _bad_id(field: str, value: Any) -> str:
    raise InvalidSpec(field, f"must be an id like 0f6b6c1e-3c3a-4c8e-9a0e-2b1f6d1e5a77 "
                             f"(got {value!r})")


def text(field: str, value: Any, max_len: int = 4096) -> str:
    if not isinstance(value, str):
        raise InvalidSpec(field, f"must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise InvalidSpec(field, f"is longer than {max_len} characters")
    bad = _XML_FORBIDDEN.search(value)
    if bad:
        raise InvalidSpec(field, f"contains the control character U+{ord(bad.group()):04X}")
    if placeholders.is_placeholder(value.strip()):
        # The agent turns these into host paths (another VM's volume or console log).
        raise InvalidSpec(field, f"cannot start with {placeholders.PREFIX}/, which is "
                                 "reserved for the engine's host placeholders")
    return value


def choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidSpec(field, f"must be one of {', '.join(choices)} (got {value!r})")
    return value


def boolean(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpec(field, f"must be true or false (got {value!r})")
    return value


def positive_int(field: str, value: Any, maximum: int = 1024, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidSpec(field, f"must be a whole number from {minimum} to {maximum} "
                                 f"(got {value!r})")
    return value


def mac(field: str, value: Any) -> str:
    try:
        eui = netaddr.EUI(value)
    except (netaddr.AddrFormatError, TypeError, ValueError):
        raise InvalidSpec(field, f"'{value}' is not a MAC address") from None
    if int(eui) >> 40 & 1:
        raise InvalidSpec(field, f"'{value}' is a multicast address")
    return str(eui).replace("-", ":").lower()


def ip_address(field: str, value: Any) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except (ValueError, TypeError):
        raise InvalidSpec(field, f"'{value}' is not an IP address") from None


def _mapping(field: str, value: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidSpec(field, f"must be a mapping, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise InvalidSpec(f"{field}.{key}" if field else str(key),
                              f"unknown key (allowed: {', '.join(allowed)})")
    return value


def _list(field: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidSpec(field, f"must be a list, got {type(value).__name__}")
    return value


def _require(field: str, value: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in value:
            raise InvalidSpec(f"{field}.{key}", "is required")


def _toggle(field: str, value: Any, allowed: tuple[str, ...]) -> dict[str, Any] | None:
    """Devices a VM has once: false (none), true (defaults) or a mapping of settings."""
    if value is False or value is None:
        return None
    if value is True:
        return {}
    return _mapping(field, value, allowed)


def boot_file(field: str, value: Any) -> str:
    """A kernel, initrd or ISO: 'domain:relative/path' on a storage domain.

    Never a host path: libvirt would hand any file (a host key, /etc/shadow) to the
    guest. The storage domains are the directories an administrator registered;
    their disk image directories hold VMs' volumes and are refused too.
    """
    given = text(field, value, 1024)
    if given.startswith("/"):
        raise InvalidSpec(field, f"'{given}' is a host path; name a file on a storage domain "
                                 "as '<storage domain>:<path>'")
    domain, sep, path = given.partition(":")
    if not sep or not domain or not path:
        raise InvalidSpec(field, f"must be '<storage domain>:<path>' (got {given!r})")
    name(field, domain)
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or any(c in path for c in "\n\r\t"):
        raise InvalidSpec(field, f"path '{path}' must be relative and stay inside the storage domain")
    if IMAGE_DIR_RE.match(parts[0]):
        raise InvalidSpec(field, f"path '{path}' is inside a disk image directory; "
                                 "VM volumes cannot be used as boot files")
    return given


def boot_order(field: str, value: Any) -> int | None:
    return None if value is None else positive_int(field, value, MAX_BOOT_ORDER)


def _unique(field: str, items: list[dict[str, Any]], key: str) -> None:
    seen: set[Any] = set()
    for index, item in enumerate(items):
        value = item.get(key)
        if value not in (None, "") and value in seen:
            raise InvalidSpec(f"{field}[{index}].{key}", f"duplicate {key} '{value}'")
        seen.add(value)


def _names(field: str, value: Any) -> list[str]:
    names = [name(f"{field}[{i}]", item) for i, item in enumerate(_list(field, value))]
    seen: set[str] = set()
    for index, item in enumerate(names):
        if item in seen:
            raise InvalidSpec(f"{field}[{index}]", f"duplicate name '{item}'")
        seen.add(item)
    return names


def check_shape(field: str, value: Any) -> None:
    """Bound the work any later check does: nesting, list and mapping sizes, the values
    and characters in all. Walked without recursion, so an alias bomb from YAML (one
    list referenced a billion times) is refused after MAX_VALUES steps."""
    stack: list[tuple[str, Any, int]] = [(field, value, 0)]
    values = chars = 0
    while stack:
        path, item, depth = stack.pop()
        values += 1
        if values > MAX_VALUES:
            raise InvalidSpec(path or "spec", f"the spec holds more than {MAX_VALUES} values")
        if isinstance(item, str):
            chars += len(item)
            if chars > MAX_CHARS:
                raise InvalidSpec(path or "spec", f"the spec's strings hold more than "
                                                  f"{MAX_CHARS} characters")
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth >= MAX_DEPTH:
            raise InvalidSpec(path, f"is nested more than {MAX_DEPTH} levels deep")
        if len(item) > MAX_ITEMS:
            raise InvalidSpec(path, f"has {len(item)} items; at most {MAX_ITEMS}")
        if isinstance(item, list):
            stack.extend((f"{path}[{i}]", sub, depth + 1) for i, sub in enumerate(item))
            continue
        for key, sub in item.items():
            if isinstance(key, str):
                chars += len(key)
            stack.append((f"{path}.{key}" if path else str(key), sub, depth + 1))


# -- VM-level sub-objects ---------------------------------------------------------------------

CPU_KEYS = ("sockets", "cores", "threads", "mode", "model", "max_vcpus")


def cpu(value: Any) -> dict[str, Any]:
    value = _mapping("cpu", value, CPU_KEYS)
    out: dict[str, Any] = {key: positive_int(f"cpu.{key}", value.get(key, 1), 256)
                           for key in ("sockets", "cores", "threads")}
    # None: the engine picks from the cluster's virt_type (see docs/vm-spec.md).
    out["mode"] = choice("cpu.mode", value["mode"], CPU_MODES) if value.get("mode") else None
    out["model"] = ""
    if value.get("model"):
        out["model"] = text("cpu.model", value["model"], 64)
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", out["model"]):
            raise InvalidSpec("cpu.model", f"'{out['model']}' is not a CPU model name")
        if out["mode"] not in ("custom", None):
            raise InvalidSpec("cpu.model", f"a CPU model needs mode custom (mode is {out['mode']})")
        out["mode"] = "custom"
    elif out["mode"] == "custom":
        raise InvalidSpec("cpu.model", "is required with mode custom")
    out["max_vcpus"] = 0
    if value.get("max_vcpus") is not None:
        out["max_vcpus"] = positive_int("cpu.max_vcpus", value["max_vcpus"], 1024)
    check_vcpus(out, out["max_vcpus"])
    return out


def check_vcpus(topology: dict[str, Any], max_vcpus: int) -> None:
    """max_vcpus bounds the vCPUs and is built of whole sockets (libvirt's topology rule)."""
    vcpus = topology["sockets"] * topology["cores"] * topology["threads"]
    if vcpus > 1024:
        raise InvalidSpec("cpu", f"{vcpus} vCPUs (sockets x cores x threads) is more than 1024")
    if not max_vcpus:
        return
    if vcpus > max_vcpus:
        raise InvalidSpec("cpu.max_vcpus", f"the topology gives {vcpus} vCPUs, more than "
                                           f"max_vcpus {max_vcpus}")
    per_socket = topology["cores"] * topology["threads"]
    if max_vcpus % per_socket:
        raise InvalidSpec("cpu.max_vcpus", f"must be a multiple of cores x threads "
                                           f"({per_socket}) so vCPUs are added by whole sockets")


def firmware(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"type": value}
    value = _mapping("firmware", value, ("type", "secure_boot"))
    out = {"type": choice("firmware.type", value.get("type", "bios"), FIRMWARES),
           "secure_boot": boolean("firmware.secure_boot", value.get("secure_boot", False))}
    if out["secure_boot"] and out["type"] != "uefi":
        raise InvalidSpec("firmware.secure_boot", "needs firmware type uefi")
    return out


def hugepages(value: Any) -> int:
    """Page size in KiB backing the guest memory; 0 for none."""
    if value is False or value is None:
        return 0
    if value is True:
        return HUGEPAGE_KIB["2MiB"]
    if isinstance(value, str) and value in HUGEPAGE_KIB:
        return HUGEPAGE_KIB[value]
    raise InvalidSpec("hugepages", f"must be false, true, {' or '.join(HUGEPAGE_KIB)} "
                                   f"(got {value!r})")


def numa(value: Any) -> int:
    if value is False or value is None:
        return 0
    value = _mapping("numa", value, ("nodes",))
    return positive_int("numa.nodes", value.get("nodes", 1), 64)


def high_availability(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        value = {"enabled": value}
    value = _mapping("high_availability", value, ("enabled", "priority"))
    return {"enabled": boolean("high_availability.enabled", value.get("enabled", False)),
            "priority": positive_int("high_availability.priority", value.get("priority", 0),
                                     HA_PRIORITY_MAX, minimum=0)}


def placement(value: Any) -> dict[str, Any]:
    value = _mapping("placement", value, ("hosts", "affinity_groups", "hooks"))
    return {"hosts": _names("placement.hosts", value.get("hosts", [])),
            "affinity_groups": _names("placement.affinity_groups",
                                      value.get("affinity_groups", [])),
            # Host hooks the VM cannot run without (its custom properties are
            # for hooks too, but a host without the hook simply ignores them).
            "hooks": _names("placement.hooks", value.get("hooks", []))}


def custom_properties(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidSpec("custom_properties", "must be a mapping of names to strings")
    out = {}
    for key, item in value.items():
        if not properties.is_name(key):
            raise InvalidSpec(f"custom_properties.{key}", f"names are {properties.NAME_RULE}")
        if isinstance(item, (dict, list)) or item is None:
            raise InvalidSpec(f"custom_properties.{key}", "must be a string, number or boolean")
        out[key] = text(f"custom_properties.{key}",
                        str(item).lower() if isinstance(item, bool) else str(item))
    return out


# -- devices ----------------------------------------------------------------------------------

DISK_KEYS = ("name", "size", "format", "interface", "storage_domain", "lun", "bootable",
             "boot_order", "readonly", "shareable", "cache", "io", "discard", "iotune", "serial")


def iotune(field: str, value: Any) -> dict[str, int]:
    value = _mapping(field, value, IOTUNE_KEYS)
    return {key: positive_int(f"{field}.{key}", value[key], 2**50) for key in IOTUNE_KEYS
            if key in value}


def disk(field: str, value: Any) -> dict[str, Any]:
    check_shape(field, value)
    value = _mapping(field, value, DISK_KEYS)
    _require(field, value, ("name",))
    out: dict[str, Any] = {"name": name(f"{field}.name", value["name"])}
    if "lun" in value:
        for key in ("size", "storage_domain", "format"):
            if key in value:
                raise InvalidSpec(f"{field}.{key}", "does not apply to a lun disk "
                                                    "(the block device has its own)")
        lun = text(f"{field}.lun", value["lun"], 128)
        if not LUN_RE.match(lun):
            raise InvalidSpec(f"{field}.lun", f"must name a LUN an administrator registered "
                                              f"(its name or WWID), not a device path "
                                              f"(got {lun!r})")
        out.update(lun=lun, format="raw")
    else:
        _require(field, value, ("size", "storage_domain"))
        out.update(size_mib=size_mib(f"{field}.size", value["size"]),
                   format=choice(f"{field}.format", value.get("format", "qcow2"), DISK_FORMATS),
                   storage_domain=name(f"{field}.storage_domain", value["storage_domain"]))
    out.update(
        interface=choice(f"{field}.interface", value.get("interface", "virtio"), DISK_INTERFACES),
        bootable=boolean(f"{field}.bootable", value.get("bootable", False)),
        boot_order=boot_order(f"{field}.boot_order", value.get("boot_order")),
        readonly=boolean(f"{field}.readonly", value.get("readonly", False)),
        shareable=boolean(f"{field}.shareable", value.get("shareable", False)),
        cache=choice(f"{field}.cache", value.get("cache", "default"), DISK_CACHES),
        io=choice(f"{field}.io", value.get("io", "default"), DISK_IO),
        discard=choice(f"{field}.discard", value.get("discard", "ignore"), DISK_DISCARD),
        iotune=iotune(f"{field}.iotune", value.get("iotune", {})),
        serial="",
    )
    if value.get("serial"):
        serial = text(f"{field}.serial", value["serial"], 20)
        if not SERIAL_RE.match(serial):
            raise InvalidSpec(f"{field}.serial", "must be 1-20 letters, digits, '.', '_' or '-'")
        out["serial"] = serial
    if out["boot_order"] is not None:
        out["bootable"] = True
    if out["io"] == "native" and out["cache"] not in ("none", "directsync"):
        raise InvalidSpec(f"{field}.io", "native I/O needs cache none or directsync")
    if out["readonly"] and out["interface"] == "sata":
        raise InvalidSpec(f"{field}.readonly", "a SATA disk cannot be read-only (use virtio or scsi)")
    return out


def cdrom(value: Any) -> dict[str, Any] | None:
    """False removes the drive; '' or {} is an empty drive; a string is the ISO: an ISO
    disk's name (a floating disk uploaded with content_type iso, oVirt's cd_iso) or a
    file on a storage domain, 'domain:path'."""
    if value is False:
        return None
    if value is None or isinstance(value, str):
        value = {"iso": value or ""}
    value = _mapping("cdrom", value, ("iso", "boot_order"))
    iso = value.get("iso") or ""
    if isinstance(iso, str) and iso and ":" not in iso and not iso.startswith("/"):
        iso = name("cdrom.iso", iso)  # resolved to its volume by the engine (vm_config)
    elif iso:
        iso = boot_file("cdrom.iso", iso)
    return {"iso": iso, "boot_order": boot_order("cdrom.boot_order", value.get("boot_order"))}


NIC_KEYS = ("name", "network", "mac", "model", "mtu", "vlan", "link_state", "bandwidth",
            "boot_order")


def bandwidth(field: str, value: Any) -> dict[str, Any]:
    value = _mapping(field, value, ("inbound", "outbound"))
    out = {}
    for direction in ("inbound", "outbound"):
        if value.get(direction) is None:
            continue
        sub = f"{field}.{direction}"
        rates = _mapping(sub, value[direction], ("average", "peak", "burst"))
        _require(sub, rates, ("average",))
        out[direction] = {key: positive_int(f"{sub}.{key}", rates[key], 2**32 - 1)
                          for key in ("average", "peak", "burst") if key in rates}
    return out


def nic(field: str, value: Any) -> dict[str, Any]:
    check_shape(field, value)
    value = _mapping(field, value, NIC_KEYS)
    _require(field, value, ("name", "network"))
    result: dict[str, Any] = {
        "name": name(f"{field}.name", value["name"]),
        "network": name(f"{field}.network", value["network"]),
        "model": choice(f"{field}.model", value.get("model", "virtio"), NIC_MODELS),
        "mtu": 0 if value.get("mtu") is None else positive_int(f"{field}.mtu", value["mtu"],
                                                               65535, 68),
        "vlan": 0 if value.get("vlan") is None else positive_int(f"{field}.vlan", value["vlan"],
                                                                 4094),
        "link_state": choice(f"{field}.link_state", value.get("link_state", "up"), LINK_STATES),
        "bandwidth": bandwidth(f"{field}.bandwidth", value.get("bandwidth") or {}),
        "boot_order": boot_order(f"{field}.boot_order", value.get("boot_order")),
    }
    if len(result["network"]) > 15:
        raise InvalidSpec(f"{field}.network", "a host bridge name has at most 15 characters")
    if value.get("mac") is not None:
        result["mac"] = mac(f"{field}.mac", value["mac"])
    return result


def graphics(value: Any) -> dict[str, Any] | None:
    if value is False or value is None:
        return None
    if isinstance(value, str):
        value = {"type": value}
    value = _mapping("graphics", value, ("type", "listen", "password"))
    out = {"type": choice("graphics.type", value.get("type", "vnc"), GRAPHICS),
           "listen": ip_address("graphics.listen", value.get("listen", "127.0.0.1")),
           "password": ""}
    if value.get("password"):
        limit = 8 if out["type"] == "vnc" else 60
        out["password"] = text("graphics.password", value["password"], limit)
        if "\n" in out["password"] or "\r" in out["password"]:
            raise InvalidSpec("graphics.password", "cannot contain line breaks")
    if not out["password"] and not ipaddress.ip_address(out["listen"]).is_loopback:
        raise InvalidSpec("graphics.password", f"is required when graphics.listen is "
                                               f"{out['listen']}: without one anybody who "
                                               "reaches the host has the VM's console")
    return out


def video(value: Any) -> dict[str, Any] | None:
    if value is False or value is None:
        return None
    if isinstance(value, str):
        value = {"model": value}
    value = _mapping("video", value, ("model", "heads"))
    return {"model": choice("video.model", value.get("model", "virtio"), VIDEO_MODELS),
            "heads": positive_int("video.heads", value.get("heads", 1), 4)}


def rng(value: Any) -> dict[str, Any] | None:
    value = _toggle("rng", value, ("source",))
    if value is None:
        return None
    source = choice("rng.source", value.get("source", "urandom"), tuple(RNG_SOURCES))
    return {"source": RNG_SOURCES[source]}


def watchdog(value: Any) -> dict[str, Any] | None:
    value = _toggle("watchdog", value, ("model", "action"))
    if value is None:
        return None
    return {"model": choice("watchdog.model", value.get("model", "i6300esb"), WATCHDOG_MODELS),
            "action": choice("watchdog.action", value.get("action", "reset"), WATCHDOG_ACTIONS)}


def balloon(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        value = {"enabled": value}
    value = _mapping("balloon", value, ("enabled", "guarantee"))
    out = {"enabled": boolean("balloon.enabled", value.get("enabled", True)), "guarantee_mib": 0}
    if value.get("guarantee") is not None:
        if not out["enabled"]:
            raise InvalidSpec("balloon.guarantee", "needs the balloon enabled")
        out["guarantee_mib"] = size_mib("balloon.guarantee", value["guarantee"])
    return out


def tpm(value: Any) -> dict[str, Any] | None:
    value = _toggle("tpm", value, ("model", "version"))
    if value is None:
        return None
    out = {"model": choice("tpm.model", value.get("model", "tpm-crb"), TPM_MODELS),
           "version": choice("tpm.version", str(value.get("version", "2.0")), TPM_VERSIONS)}
    if out["model"] == "tpm-crb" and out["version"] != "2.0":
        raise InvalidSpec("tpm.version", "tpm-crb emulates TPM 2.0 only")
    return out


CLOUD_INIT_KEYS = ("user_data", "hostname", "ssh_keys", "network_config")


def cloud_init(value: Any) -> dict[str, Any]:
    """A NoCloud payload; {} (or false) means none."""
    if value is False or value is None:
        return {}
    value = _mapping("cloud_init", value, CLOUD_INIT_KEYS)
    out: dict[str, Any] = {"user_data": "", "hostname": "", "ssh_keys": [], "network_config": ""}
    if value.get("user_data"):
        out["user_data"] = text("cloud_init.user_data", value["user_data"], 65536)
    if value.get("hostname"):
        out["hostname"] = text("cloud_init.hostname", value["hostname"], 253)
        if not HOSTNAME_RE.match(out["hostname"]):
            raise InvalidSpec("cloud_init.hostname", f"'{out['hostname']}' is not a host name")
    for index, key in enumerate(_list("cloud_init.ssh_keys", value.get("ssh_keys") or [])):
        field = f"cloud_init.ssh_keys[{index}]"
        key = text(field, key, 16384).strip()
        if not SSH_KEY_RE.match(key):
            raise InvalidSpec(field, "is not an OpenSSH public key ('<type> <base64> [comment]')")
        out["ssh_keys"].append(key)
    config = value.get("network_config")
    if isinstance(config, dict):
        # JSON is YAML: cloud-init reads it as is, and sorted keys keep the XML stable.
        config = json.dumps(config, sort_keys=True)
    if config:
        out["network_config"] = text("cloud_init.network_config", config, 65536)
    return out


def _check_boot_orders(out: dict[str, Any]) -> None:
    """Two devices cannot share a boot order (when the spec gives every bootable list)."""
    seen: dict[int, str] = {}
    for field, items in (("disks", out.get("disks", [])), ("nics", out.get("nics", [])),
                         ("cdrom", [out["cdrom"]] if out.get("cdrom") else [])):
        for index, item in enumerate(items):
            order = item.get("boot_order")
            path = f"{field}[{index}].boot_order" if field != "cdrom" else "cdrom.boot_order"
            if order is None:
                continue
            if order in seen:
                raise InvalidSpec(path, f"boot order {order} is already used by {seen[order]}")
            seen[order] = path.rsplit(".", 1)[0]


# -- the whole spec ---------------------------------------------------------------------------

# Each top-level key with a check of its own: the value as given -> its canonical form.
_SIMPLE: dict[str, Callable[[Any], Any]] = {
    "cluster": lambda v: name("cluster", v),
    "description": lambda v: text("description", v),
    "machine": lambda v: choice("machine", v, MACHINES),
    "cmdline": lambda v: text("cmdline", v, 2048),
    "firmware": firmware,
    "hugepages": hugepages,
    "numa": numa,
    "cdrom": cdrom,
    "graphics": graphics,
    "video": video,
    "serial_console": lambda v: boolean("serial_console", v),
    "guest_agent": lambda v: boolean("guest_agent", v),
    "rng": rng,
    "watchdog": watchdog,
    "balloon": balloon,
    "tpm": tpm,
    "cloud_init": cloud_init,
    "launch_paused": lambda v: boolean("launch_paused", v),
    "custom_properties": custom_properties,
    "high_availability": high_availability,
    "placement": placement,
    "tags": lambda v: _names("tags", v),
    "template": lambda v: name("template", v),
    "template_version": lambda v: positive_int("template_version", v, 100000),
    "clone": lambda v: boolean("clone", v),
    "snapshot_vm": lambda v: name("snapshot_vm", v),
    "snapshot_name": lambda v: text("snapshot_name", v, 4000),
    "snapshot_id": lambda v: object_id("snapshot_id", v),
}


def _check_origin(out: dict[str, Any]) -> None:
    if "template" in out and "snapshot_vm" in out:
        raise InvalidSpec("snapshot_vm", "a VM is made from a template or cloned from a VM, "
                                         "not both")
    for key in ("template_version", "clone"):
        if out.get(key) and "template" not in out:
            raise InvalidSpec(key, "applies to a VM made from a template (give template)")
    for key in ("snapshot_name", "snapshot_id"):
        if key in out and "snapshot_vm" not in out:
            raise InvalidSpec(key, "names a snapshot of the VM given as snapshot_vm "
                                   "(give snapshot_vm)")
    if "snapshot_name" in out and "snapshot_id" in out:
        raise InvalidSpec("snapshot_id", "give snapshot_name or snapshot_id, not both")


def normalize_vm(spec: Any) -> dict[str, Any]:
    """Validate a VM spec; return the canonical form of the keys it gives."""
    check_shape("", spec)
    spec = _mapping("", spec, VM_KEYS + ORIGIN_KEYS)
    if "name" not in spec:
        raise InvalidSpec("name", "is required")
    out: dict[str, Any] = {"name": name("name", spec["name"])}
    for key, check in _SIMPLE.items():
        if key in spec:
            out[key] = check(spec[key])
    if "memory" in spec:
        out["memory_mib"] = size_mib("memory", spec["memory"])
    if "max_memory" in spec:
        out["max_memory_mib"] = size_mib("max_memory", spec["max_memory"]) \
            if spec["max_memory"] else 0
    if "cpu" in spec:
        out["cpu"] = cpu(spec["cpu"])
    for key in ("kernel", "initrd"):
        if key in spec:
            out[key] = boot_file(key, spec[key]) if spec[key] else ""
    if "disks" in spec:
        out["disks"] = [disk(f"disks[{i}]", d) for i, d in enumerate(_list("disks", spec["disks"]))]
        _unique("disks", out["disks"], "name")
        _unique("disks", out["disks"], "serial")
    if "nics" in spec:
        out["nics"] = [nic(f"nics[{i}]", n) for i, n in enumerate(_list("nics", spec["nics"]))]
        _unique("nics", out["nics"], "name")
        _unique("nics", out["nics"], "mac")
    _check_boot_orders(out)
    _check_origin(out)
    if out.get("memory_mib") and out.get("max_memory_mib") and \
            out["max_memory_mib"] < out["memory_mib"]:
        raise InvalidSpec("max_memory", f"{out['max_memory_mib']} MiB is less than memory "
                                        f"({out['memory_mib']} MiB)")
    if out.get("firmware", {}).get("secure_boot") and out.get("machine") == "pc":
        raise InvalidSpec("firmware.secure_boot", "needs machine q35 (SMM)")
    return out
