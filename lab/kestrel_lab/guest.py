"""The tiny test guest: a Debian kernel and a busybox initramfs.

Real guests make tests honest (devices must really appear, consoles really
print) but a disk image would be slow to build and boot. A distribution kernel
with an initramfs of busybox boots under TCG in a few seconds and reports on
the serial console what the VM sees:

    kestrel-guest: up 6.1.0-56-amd64
    kestrel-guest: disks vda vdb
    kestrel-guest: nics eth0 lo

and, when a CD-ROM holds an ISO 9660 image (the cloud-init payload), its
volume label and every line of every file on it:

    kestrel-guest: cdrom label cidata
    kestrel-guest: cdrom user-data: #cloud-config

It runs Debian's qemu-guest-agent (binary and shared libraries copied in)
when the VM has the org.qemu.guest_agent.0 channel, and gives eth0 the
static address ``kestrel.ip=ADDRESS/PREFIX`` from the kernel command line
(lab networks have no DHCP for guests); ``kestrel.dirty=MIB`` keeps rewriting
MIB of its memory (a guest live migration cannot simply copy):

    kestrel-guest: guest agent on vport1p1

A guest that burns CPU (a busy host for load and balancing tests) boots with
``BURN_CMDLINE`` added to its command line: the kernel's ``idle=poll`` spins in
its idle loop instead of halting, so every vCPU keeps one host CPU busy from
boot to power-off with no change to the initramfs.

The initramfs is rebuilt when its recipe (modules, init script) changes.
Boot it with ``<os><kernel/><initrd/><cmdline>console=ttyS0</cmdline></os>``.
The ACPI power button powers it off, so graceful shutdown can be tested too.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile

from kestrel_lab.errors import GuestBuildError, LabError
from kestrel_lab.process import run

KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"
STAMP_NAME = "guest.recipe"
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX = "/bin/busybox"
GUEST_AGENT_PACKAGE = "qemu-guest-agent"
GUEST_AGENT_BINARY = "usr/sbin/qemu-ga"
# What qemu-ga's guest-get-osinfo reports.
OS_RELEASE = """NAME="kestrel test guest"
ID=kestrel-guest
VERSION_ID=1
PRETTY_NAME="kestrel test guest 1 (busybox)"
"""

# Every vCPU busy all the time (see the module docstring).
BURN_CMDLINE = "idle=poll"

# Load order matters: insmod does not resolve dependencies.
MODULES = (
    "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
    "failover", "net_failover", "virtio_net", "virtio_balloon", "virtio_blk", "virtio_console",
    # The ACPI power button as an input event device: graceful shutdown.
    "button", "evdev",
)
# The CD-ROM (IDE on i440fx, AHCI on q35) and ISO 9660: the cloud-init payload.
# Loaded after the lines above are printed, so those stay what they always were.
CDROM_MODULES = (
    "scsi_common", "scsi_mod", "libata", "ata_piix", "libahci", "ahci", "cdrom", "sr_mod",
    "isofs",
)

# ext2 (through the ext4 driver) for a filesystem qemu-ga reports: loaded only
# for ``kestrel.fs=DEVICE``, which formats DEVICE and mounts it on /mnt/data.
FS_MODULES = ("crc32c_generic", "crc16", "mbcache", "jbd2", "ext4")

INIT_SCRIPT = r"""#!/bin/sh
# PID 1 of the kestrel test guest. Prints what the VM sees, then keeps a
# shell on the serial console. Must never exit: that would panic the kernel.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$module.ko" || echo "kestrel-guest: cannot load $module"
done
hostname kestrel-guest
echo "kestrel-guest: up $(uname -r)"
echo "kestrel-guest: disks" $(ls /sys/block)
echo "kestrel-guest: nics" $(ls /sys/class/net)
mount -t tmpfs tmpfs /tmp
ip link set lo up
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        kestrel.ip=*) ip link set eth0 up && ip addr add "${arg#kestrel.ip=}" dev eth0 ;;
        kestrel.fs=*)
            for module in $(cat /lib/modules/fs-order); do insmod "/lib/modules/$module.ko"; done
            mkdir -p /mnt/data
            mke2fs -q "/dev/${arg#kestrel.fs=}" && mount -t ext2 "/dev/${arg#kestrel.fs=}" /mnt/data \
                && echo "kestrel-guest: ${arg#kestrel.fs=} mounted on /mnt/data" ;;
        kestrel.dirty=*)
            # A busy guest for live migration: rewrite MiB of random (not zero: QEMU
            # sends zero pages nearly free) memory over and over, as fast as it can.
            mib="${arg#kestrel.dirty=}"
            dd if=/dev/urandom of=/tmp/dirty-source bs=1M count="$mib" 2>/dev/null
            (while true; do
                 dd if=/tmp/dirty-source of=/tmp/dirty bs=1M count="$mib" conv=notrunc 2>/dev/null
             done) &
            echo "kestrel-guest: dirtying $mib MiB" ;;
    esac
done
# No udev here: find the guest agent's virtio-serial port by its name.
for port in /sys/class/virtio-ports/*; do
    if [ "$(cat "$port/name" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
        mkdir -p /dev/virtio-ports
        ln -sf "../${port##*/}" /dev/virtio-ports/org.qemu.guest_agent.0
        qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 \
                -f /run/qemu-ga.pid -t /run 2>/tmp/qemu-ga.log &
        echo "kestrel-guest: guest agent on ${port##*/}"
    fi
done
# The payload CD-ROM, in the background: a guest without one must not wait for it.
(for module in $(cat /lib/modules/cdrom-order); do
     insmod "/lib/modules/$module.ko" 2>/dev/null
 done
 for try in 1 2 3 4 5 6 7 8 9 10; do
     [ -b /dev/sr0 ] && break
     sleep 0.5
 done
 mkdir -p /mnt/cdrom
 if [ -b /dev/sr0 ] && mount -t iso9660 -o ro /dev/sr0 /mnt/cdrom 2>/dev/null; then
     # ISO 9660 volume id: 32 bytes at offset 40 of the primary volume descriptor (sector 16).
     echo "kestrel-guest: cdrom label $(dd if=/dev/sr0 bs=1 skip=32808 count=32 2>/dev/null \
                                        | tr -d ' ')"
     for file in /mnt/cdrom/*; do
         sed "s|^|kestrel-guest: cdrom ${file##*/}: |" "$file"
     done
 fi) &
for event in /sys/class/input/event*; do
    if [ "$(cat "$event/device/name" 2>/dev/null)" = "Power Button" ]; then
        (head -c 24 "/dev/input/${event##*/}" >/dev/null
         echo "kestrel-guest: power button, powering off"
         poweroff -f) &
    fi
done
while true; do
    setsid cttyhack sh
done
"""


def build(dest_dir: str) -> tuple[str, str]:
    """Build the guest into ``dest_dir``; return (kernel path, initrd path).

    Cached: when both files exist nothing is done. Files appear atomically
    (renamed into place), so a present file is always a complete one.
    """
    kernel = os.path.join(dest_dir, KERNEL_NAME)
    initrd = os.path.join(dest_dir, INITRD_NAME)
    stamp = os.path.join(dest_dir, STAMP_NAME)
    if os.path.isfile(kernel) and os.path.isfile(initrd) and _read(stamp) == recipe():
        return kernel, initrd
    os.makedirs(dest_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".guest-build-") as work:
        deb = _download_kernel(work)
        modules = _extract_kernel(deb, work)
        root = os.path.join(work, "initramfs")
        _populate_initramfs(root, modules)
        _add_guest_agent(root, work)
        _write_initramfs(root, os.path.join(work, INITRD_NAME))
        with open(os.path.join(work, STAMP_NAME), "w") as out:
            out.write(recipe())
        for name in (KERNEL_NAME, INITRD_NAME, STAMP_NAME):
            os.chmod(os.path.join(work, name), 0o644)
            os.replace(os.path.join(work, name), os.path.join(dest_dir, name))
    return kernel, initrd


def recipe() -> str:
    """What the initramfs is made of: a guest built from another recipe is rebuilt."""
    digest = hashlib.sha256("\0".join((*MODULES, "|", *CDROM_MODULES, "|", *FS_MODULES, "|", INIT_SCRIPT, "|",
                                      GUEST_AGENT_PACKAGE, OS_RELEASE))
                            .encode()).hexdigest()
    return f"{digest}\n"


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _kernel_package() -> str:
    """The versioned kernel package the distribution's meta package points at."""
    try:
        show = run(["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE]).stdout
    except LabError as exc:
        raise GuestBuildError(
            f"cannot find {KERNEL_META_PACKAGE} (run apt-get update?): {exc}") from exc
    match = re.search(r"^Depends:.*?\b(linux-image-[0-9][^\s,(]*)", show, re.MULTILINE)
    if not match:
        raise GuestBuildError(f"{KERNEL_META_PACKAGE} depends on no versioned kernel")
    return match.group(1)


def _download_kernel(work: str) -> str:
    return _download(_kernel_package(), work)


def _download(package: str, work: str) -> str:
    """Download one Debian package into ``work``; the path of its .deb."""
    before = set(os.listdir(work))
    try:
        # The sandbox user _apt cannot write into our private temp directory.
        run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package], cwd=work)
    except LabError as exc:
        raise GuestBuildError(f"cannot download {package}: {exc}") from exc
    debs = [name for name in set(os.listdir(work)) - before if name.endswith(".deb")]
    if len(debs) != 1:
        raise GuestBuildError(f"apt-get download {package} left {debs or 'no .deb'}")
    return os.path.join(work, debs[0])


def _extract_kernel(deb: str, work: str) -> dict[str, bytes]:
    """Stream the package once, keeping only the kernel and the modules we load.

    Returns {module name: uncompressed .ko}; the kernel lands in
    ``work``/vmlinuz. Modules built into the kernel are simply absent.
    """
    module_re = re.compile(r"^\./(?:usr/)?lib/modules/[^/]+/kernel/.*/([^/]+)\.ko(\.xz)?$")
    builtin_re = re.compile(r"^\./(?:usr/)?lib/modules/[^/]+/modules\.builtin$")
    wanted = set(MODULES) | set(CDROM_MODULES) | set(FS_MODULES)
    modules: dict[str, bytes] = {}
    builtin = ""
    kernel_found = False
    unpack = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=unpack.stdout, mode="r|") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                if re.match(r"^\./boot/vmlinuz-", member.name):
                    with open(os.path.join(work, KERNEL_NAME), "wb") as out:
                        shutil.copyfileobj(archive.extractfile(member), out)
                    kernel_found = True
                elif builtin_re.match(member.name):
                    builtin = archive.extractfile(member).read().decode()
                elif match := module_re.match(member.name):
                    name, xz = match.groups()
                    name = name.replace("-", "_")
                    if name in wanted:
                        data = archive.extractfile(member).read()
                        modules[name] = lzma.decompress(data) if xz else data
    finally:
        unpack.stdout.close()
        if unpack.wait() != 0:
            raise GuestBuildError(f"dpkg-deb --fsys-tarfile {deb} failed")
    if not kernel_found:
        raise GuestBuildError(f"{deb} holds no /boot/vmlinuz-*")
    builtin_names = {
        os.path.basename(line).removesuffix(".ko").replace("-", "_") for line in builtin.split()
    }
    missing = wanted - modules.keys() - builtin_names
    if missing:
        raise GuestBuildError(f"{deb} lacks kernel modules {sorted(missing)}")
    return modules


def _populate_initramfs(root: str, modules: dict[str, bytes]) -> None:
    for directory in ("bin", "dev", "proc", "sys", "tmp", "etc", "lib/modules"):
        os.makedirs(os.path.join(root, directory), exist_ok=True)
    if not os.path.isfile(BUSYBOX):
        raise GuestBuildError(f"{BUSYBOX} missing: install busybox-static")
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    os.symlink("busybox", os.path.join(root, "bin", "sh"))
    order = [name for name in MODULES if name in modules]
    for name in order:
        with open(os.path.join(root, "lib", "modules", f"{name}.ko"), "wb") as out:
            out.write(modules[name])
    with open(os.path.join(root, "lib", "modules", "load-order"), "w") as out:
        out.write("\n".join(order) + "\n")
    cdrom_order = [name for name in CDROM_MODULES if name in modules]
    for name in cdrom_order:
        with open(os.path.join(root, "lib", "modules", f"{name}.ko"), "wb") as out:
            out.write(modules[name])
    with open(os.path.join(root, "lib", "modules", "cdrom-order"), "w") as out:
        out.write("\n".join(cdrom_order) + "\n")
    fs_order = [name for name in FS_MODULES if name in modules]
    for name in fs_order:
        with open(os.path.join(root, "lib", "modules", f"{name}.ko"), "wb") as out:
            out.write(modules[name])
    with open(os.path.join(root, "lib", "modules", "fs-order"), "w") as out:
        out.write("\n".join(fs_order) + "\n")
    init = os.path.join(root, "init")
    with open(init, "w") as out:
        out.write(INIT_SCRIPT)
    os.chmod(init, 0o755)


def _add_guest_agent(root: str, work: str) -> None:
    """qemu-ga from its Debian package, with the shared libraries ``ldd`` finds here
    (the host is Debian too), at the paths the binary asks for."""
    deb = _download(GUEST_AGENT_PACKAGE, work)
    unpacked = os.path.join(work, "qemu-ga")
    try:
        run(["dpkg-deb", "-x", deb, unpacked])
    except LabError as exc:
        raise GuestBuildError(f"cannot unpack {deb}: {exc}") from exc
    binary = os.path.join(unpacked, GUEST_AGENT_BINARY)
    if not os.path.isfile(binary):
        raise GuestBuildError(f"{deb} holds no /{GUEST_AGENT_BINARY}")
    shutil.copy2(binary, os.path.join(root, "bin", "qemu-ga"))
    for library in _shared_libraries(binary):
        target = os.path.join(root, library.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(library, target)  # the file itself, not the symlink
        os.chmod(target, 0o755)
    for directory in ("run", "var"):
        os.makedirs(os.path.join(root, directory), exist_ok=True)
    os.symlink("../run", os.path.join(root, "var", "run"))
    with open(os.path.join(root, "etc", "os-release"), "w") as out:
        out.write(OS_RELEASE)


def _shared_libraries(binary: str) -> list[str]:
    """Absolute paths of every library ``binary`` loads, the dynamic loader included."""
    try:
        out = run(["ldd", binary]).stdout
    except LabError as exc:
        raise GuestBuildError(f"ldd {binary} failed (a library missing here?): {exc}") from exc
    libraries = []
    for line in out.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libraries.append(match.group(1))
        elif "not found" in line:
            raise GuestBuildError(f"{binary} needs {line.split()[0]}, not installed here")
    return libraries


def _write_initramfs(root: str, path: str) -> None:
    """A gzip-compressed newc cpio archive, owned by root, as the kernel expects."""
    entries = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            entries.append(os.path.relpath(os.path.join(directory, name), root))
    archive = run(
        ["cpio", "--create", "--format=newc", "--owner=0:0", "--reproducible", "--quiet"],
        cwd=root, input="\n".join(entries).encode() + b"\n", text=False,
    ).stdout
    with gzip.open(path, "wb", compresslevel=6) as out:
        out.write(archive)
