"""What makes a lab host look like a separate machine: its own files.

Each host gets private copies of the paths below, bind-mounted over the real
ones inside its mount namespace. The sources live under
``<state_dir>/hosts/<name>/`` with the same relative paths, so the root
namespace can read a host's pid files, logs and sockets without entering it.
Everything else (/usr, /srv, /root, ...) is shared, like a cluster with NFS.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid

# Directories private to each host. Configuration starts as a copy of the
# machine's own, minus its objects (domains, pools, secrets); state, cache and
# log directories start with the package's empty layout; the rest start empty.
CONFIG_DIRS = ("/etc/libvirt", "/etc/ssh")
LAYOUT_DIRS = ("/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")
# /etc/pki: each host's libvirt TLS certificate and key (host role, kestrel_host_libvirt_tls).
EMPTY_DIRS = ("/run/libvirt", "/etc/kestrel", "/var/lib/kestrel", "/var/log/kestrel",
              "/run/kestrel", "/opt/kestrel", "/etc/pki")
PRIVATE_DIRS = (*CONFIG_DIRS, *LAYOUT_DIRS, *EMPTY_DIRS)
PRIVATE_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")

LIBVIRTD_PIDFILE = "/run/libvirt/libvirtd.pid"
VIRTLOGD_PIDFILE = "/run/libvirt/virtlogd.pid"
LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"

_HOST_UUID_NAMESPACE = uuid.UUID("5f0c4a56-7c1e-4d8e-9a53-6b3f2d1e0a77")


def host_uuid(name: str) -> str:
    """A stable, distinct libvirt host UUID per host name (same across down/up)."""
    return str(uuid.uuid5(_HOST_UUID_NAMESPACE, f"kestrel-lab/{name}"))


def source(root: str, path: str) -> str:
    """Where the host's private ``path`` lives in the root namespace."""
    return os.path.join(root, path.lstrip("/"))


def prepare(root: str, name: str, address: str) -> None:
    """Create the host's private tree: copies, libvirt settings, hostname."""
    for path in CONFIG_DIRS:
        shutil.copytree(path, source(root, path), symlinks=True, ignore=_machine_objects)
    for path in LAYOUT_DIRS:
        _copy_layout(path, source(root, path))
    for path in EMPTY_DIRS:
        os.makedirs(source(root, path), exist_ok=True)
    _configure_libvirt(source(root, "/etc/libvirt"), name, address)
    with open(source(root, "/etc/hostname"), "w", encoding="ascii") as hostname:
        hostname.write(name + "\n")
    open(source(root, "/etc/hosts"), "a").close()  # filled by write_hosts_file
    with open(source(root, "/etc/resolv.conf"), "w", encoding="ascii") as resolv:
        # Lab traffic stays on 10.77.0.0/24: no name server, every name is in /etc/hosts.
        resolv.write("# kestrel lab host: no DNS; lab names are in /etc/hosts\n")
    for path in (*PRIVATE_DIRS, *PRIVATE_FILES):
        _ensure_mountpoint(path)


def _machine_objects(directory: str, names: list[str]) -> set[str]:
    """What the machine's own libvirtd defined (domains, autostart links, pools,
    secrets): another host must not inherit it."""
    if directory == "/etc/libvirt/qemu":
        return {n for n in names if n.endswith(".xml") or n == "autostart"}
    if directory in ("/etc/libvirt/storage", "/etc/libvirt/secrets") or directory.endswith(
            "/autostart"):
        return set(names)
    return set()


def _copy_layout(path: str, target: str) -> None:
    """Recreate ``path`` and its immediate subdirectories (owner, mode), no files."""
    os.makedirs(target, exist_ok=True)
    if not os.path.isdir(path):
        return
    pairs = [(path, target)] + [
        (entry.path, os.path.join(target, entry.name))
        for entry in os.scandir(path) if entry.is_dir(follow_symlinks=False)]
    for original, copy in pairs:
        info = os.stat(original)
        os.makedirs(copy, exist_ok=True)
        os.chown(copy, info.st_uid, info.st_gid)
        os.chmod(copy, info.st_mode & 0o7777)


def _configure_libvirt(etc: str, name: str, address: str) -> None:
    _set_options(os.path.join(etc, "libvirtd.conf"), name, {
        "host_uuid": f'"{host_uuid(name)}"',
        # Plain TCP between lab hosts, so live migration (qemu+tcp) needs no PKI.
        "listen_tcp": "1",
        "listen_tls": "0",
        "auth_tcp": '"none"',
        "log_outputs": '"3:file:/var/log/libvirt/libvirtd.log"',
    })
    _set_options(os.path.join(etc, "qemu.conf"), name, {"migration_host": f'"{address}"'})


def _set_options(path: str, name: str, options: dict[str, str]) -> None:
    """Comment out any active setting of ``options`` in a libvirt .conf, then append ours."""
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as conf:
            text = conf.read()
    keys = "|".join(map(re.escape, options))
    text = re.sub(rf"^(\s*(?:{keys})\s*=)", r"#\1", text, flags=re.MULTILINE)
    text += f"\n# kestrel lab host {name}\n"
    text += "".join(f"{key} = {value}\n" for key, value in options.items())
    with open(path, "w", encoding="utf-8") as conf:
        conf.write(text)


def _ensure_mountpoint(path: str) -> None:
    """Bind mounts need a target; create a missing one on the machine (empty)."""
    if path in PRIVATE_FILES:
        if not os.path.exists(path):
            open(path, "a").close()
    else:
        os.makedirs(path, exist_ok=True)


def write_hosts_file(root: str, hosts: list[tuple[str, str]], gateway: str) -> None:
    """/etc/hosts naming every lab host and the engine side of the bridge.

    Rewritten in place (same inode) so a running host's bind mount sees it.
    """
    lines = ["127.0.0.1\tlocalhost", f"{gateway}\tkestrel-engine"]
    lines += [f"{address}\t{name}" for name, address in hosts]
    with open(source(root, "/etc/hosts"), "w", encoding="ascii") as hosts_file:
        hosts_file.write("\n".join(lines) + "\n")


def bind_argvs(root: str) -> list[list[str]]:
    """The mount commands that put the host's private tree in place."""
    paths = (*PRIVATE_DIRS, *PRIVATE_FILES)
    return [["mount", "--bind", source(root, path), path] for path in paths]


def remove(root: str) -> None:
    shutil.rmtree(root, ignore_errors=True)
