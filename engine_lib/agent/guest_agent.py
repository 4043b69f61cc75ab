"""What qemu-guest-agent says about a guest, in the shape the engine stores.

libvirt hands the agent's answers over as flat typed parameters
(``virDomainGetGuestInfo``: "os.id", "fs.0.mountpoint", ...) and the
addresses as a dict per interface (``virDomainInterfaceAddresses`` with the
agent as source). This module turns both into one document:

    {"hostname": "web1", "os": {"id": "debian", "name": ..., "version": ...},
     "users": [{"name", "domain"?, "login_time"?}],
     "filesystems": [{"name", "mountpoint", "type", "total_bytes"?, "used_bytes"?,
                      "disks": [...]}],
     "interfaces": [{"name": "eth0", "mac": "52:54:00:...", "ips": ["192.0.2.10/24"]}],
     "ips": ["192.0.2.10", ...], "timezone": {"name", "offset"}}

``ips`` lists the guest's addresses without loopback and link-local ones,
the way an inventory wants them (``ansible_host``). Pure: no libvirt.
"""

from __future__ import annotations

import ipaddress

# guestInfo()'s os.* keys -> ours.
_OS_KEYS = {"id": "id", "name": "name", "pretty-name": "pretty_name", "version": "version",
            "version-id": "version_id", "kernel-release": "kernel_release",
            "kernel-version": "kernel_version", "machine": "machine"}


def _indexed(info: dict, prefix: str) -> list[dict]:
    """The ``prefix.N.key`` entries of ``info`` as one dict per N, in order."""
    count = int(info.get(f"{prefix}.count", 0) or 0)
    items = []
    for index in range(count):
        head = f"{prefix}.{index}."
        items.append({key[len(head):]: value for key, value in info.items()
                      if key.startswith(head)})
    return items


def _filesystem(raw: dict) -> dict:
    fs = {"name": raw.get("name", ""), "mountpoint": raw.get("mountpoint", ""),
          "type": raw.get("fstype", "")}
    for key in ("total-bytes", "used-bytes"):
        if key in raw:
            fs[key.replace("-", "_")] = raw[key]
    disks = []
    for index in range(int(raw.get("disk.count", 0) or 0)):
        head = f"disk.{index}."
        disk = {key[len(head):]: value for key, value in raw.items() if key.startswith(head)}
        if disk:
            disks.append(disk)
    fs["disks"] = disks
    return fs


def _user(raw: dict) -> dict:
    user = {"name": raw.get("name", "")}
    if raw.get("domain"):
        user["domain"] = raw["domain"]
    if "login-time" in raw:
        user["login_time"] = raw["login-time"]  # ms since the epoch
    return user


def interfaces(addresses: dict) -> list[dict]:
    """virDomainInterfaceAddresses' dict -> [{"name", "mac", "ips": ["addr/prefix"]}]."""
    result = []
    for name, data in sorted((addresses or {}).items()):
        ips = [f"{a['addr']}/{a['prefix']}" for a in data.get("addrs") or []
               if a.get("addr")]
        result.append({"name": name, "mac": data.get("hwaddr") or "", "ips": ips})
    return result


def routable_ips(nics: list[dict]) -> list[str]:
    """Every address of every interface except loopback and link-local ones."""
    ips = []
    for nic in nics:
        for text in nic["ips"]:
            address = ipaddress.ip_interface(text).ip
            if not (address.is_loopback or address.is_link_local):
                ips.append(str(address))
    return ips


def report(info: dict, addresses: dict) -> dict:
    """The guest document from guestInfo() parameters and interfaceAddresses()."""
    nics = interfaces(addresses)
    doc = {
        "hostname": info.get("hostname", ""),
        "os": {ours: info[f"os.{theirs}"] for theirs, ours in _OS_KEYS.items()
               if f"os.{theirs}" in info},
        "users": [_user(raw) for raw in _indexed(info, "user")],
        "filesystems": [_filesystem(raw) for raw in _indexed(info, "fs")],
        "interfaces": nics,
        "ips": routable_ips(nics),
    }
    if "timezone.name" in info or "timezone.offset" in info:
        doc["timezone"] = {"name": info.get("timezone.name", ""),
                           "offset": info.get("timezone.offset", 0)}
    return doc
