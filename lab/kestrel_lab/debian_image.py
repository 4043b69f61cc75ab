"""A real Debian 12 guest disk, built here from Debian packages, cached.

    from kestrel_lab.debian_image import debian_image
    path = debian_image(state_dir)   # <state>/images/debian-12-<recipe hash>.qcow2

Built once per recipe with mmdebstrap (a few minutes; the lab's state
directory keeps it across runs and lab downs, and two processes asking at once
build it once). ``kestrel-lab image debian`` does the same and prints the path.

What the image is (the facts a test may rely on):

- qcow2 (compressed), ``VIRTUAL_SIZE_MIB`` virtual; MBR, syslinux on a FAT
  partition 1, ext4 root on partition 2 (the last one: cloud-init's growpart
  grows it when the disk is larger). It boots from the disk alone (no
  ``<kernel>``) under SeaBIOS, q35 or pc, on virtio-blk (its initramfs also has SATA and
  virtio-scsi).
- Kernel command line ``KERNEL_CMDLINE``: serial console on ttyS0 (login
  prompt there too), classic NIC names, so the first NIC is ``eth0``.
- cloud-init reads only the NoCloud datasource (a CD-ROM or disk labelled
  ``cidata`` with ``meta-data``, ``user-data`` and optionally
  ``network-config``: what kestrel's ``cloud_init`` payload writes), so boot
  never waits for a metadata server. Honoured: ``local-hostname`` /
  ``hostname``; meta-data ``public-keys`` (kestrel's ``cloud_init.ssh_keys``)
  for the default user ``DEFAULT_USER`` (passwordless sudo); user-data
  ``users`` (list ``default`` too to keep that user) with
  ``ssh_authorized_keys``, ``runcmd``, ``write_files``, ``power_state``;
  network-config version 2 (static ``addresses``, ``gateway4``/``routes``,
  ``nameservers``) rendered for systemd-networkd. Without a network-config
  cloud-init falls back to DHCP on ``NIC``. SSH host keys are made on first
  boot (ed25519 only: fast under TCG); password logins are off.
- qemu-guest-agent starts when the VM has the ``org.qemu.guest_agent.0`` channel
  (guest-get-host-name, guest-network-get-interfaces, guest-exec … answer).
- No root password and an empty machine-id (each clone gets its own): nothing
  logs in without cloud-init's user-data or meta-data keys.
- ``MEMORY_MIB`` is enough. Under TCG the agent answers after one to three
  minutes (more on a loaded machine): wait on the agent or SSH, never a fixed time.
- Trimmed for TCG: apt/man/e2scrub/fstrim timers and unneeded mounts masked, a
  small initramfs, no fsck at boot, fewer cloud-init modules (config stage:
  set-passwords, timezone, runcmd; final stage: packages, write_files with
  ``defer``, scripts, final message, power_state), networkd-wait-online gives
  up after ``WAIT_ONLINE_TIMEOUT_S``.
"""

from __future__ import annotations

import glob
import os
import uuid

from kestrel_lab import bootdisk, image_cache
from kestrel_lab.errors import GuestBuildError, LabError
from kestrel_lab.process import run

SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
PACKAGES = (
    "systemd-sysv", "udev", "dbus", "linux-image-amd64", "initramfs-tools", "cloud-init",
    "cloud-guest-utils", "qemu-guest-agent", "openssh-server", "sudo", "iproute2",
    "netbase", "procps", "e2fsprogs",
)
VIRTUAL_SIZE_MIB = 2048
BOOT_MIB = 96
KERNEL_CMDLINE = "console=ttyS0,115200 net.ifnames=0 quiet mitigations=off"
WAIT_ONLINE_TIMEOUT_S = 10
NIC = "eth0"
DEFAULT_USER = "debian"
MEMORY_MIB = 512
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "systemd-timesyncd.service", "modprobe@drm.service",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "dev-hugepages.mount",
    "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
)
# Files written over the installed system (path inside the guest: content).
FILES = {
    "etc/cloud/cloud.cfg.d/01_kestrel.cfg": """\
# The lab's images get their configuration from a cidata CD-ROM only.
datasource_list: [NoCloud, None]
system_info:
  network:
    renderers: [networkd]
ssh_genkeytypes: [ed25519]
ssh_pwauth: false
disable_root: true
locale: C.UTF-8
grub_dpkg:
  enabled: false
# Each module costs seconds under TCG: keep those a lab or a playbook uses
# (passwords, timezone, runcmd, packages, scripts, power_state).
cloud_config_modules: [set-passwords, timezone, runcmd]
cloud_final_modules: [package-update-upgrade-install, write-files-deferred, scripts-vendor,
                      scripts-per-once, scripts-per-boot, scripts-per-instance, scripts-user,
                      final-message, power-state-change]
""",
    "etc/systemd/system/systemd-networkd-wait-online.service.d/timeout.conf": f"""\
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout={WAIT_ONLINE_TIMEOUT_S}
""",
    "etc/systemd/journald.conf.d/kestrel.conf": "[Journal]\nStorage=volatile\n",
    "etc/hostname": "localhost\n",
}
# In place before any package is unpacked (mmdebstrap's setup hook), so dpkg
# leaves out what a VM never uses and the kernel's postinst makes the small
# initramfs at once. None of these paths is a package's conffile.
EARLY_FILES = {
    "etc/dpkg/dpkg.cfg.d/kestrel-trim": "\n".join((
        "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
        *(f"path-exclude=/lib/modules/*/kernel/{tree}/*" for tree in (
            "sound", "drivers/gpu", "drivers/media", "drivers/net/wireless",
            "drivers/infiniband", "drivers/staging", "drivers/bluetooth",
            "drivers/iio", "drivers/isdn", "drivers/hid", "drivers/usb", "net/wireless",
            "net/mac80211", "net/bluetooth")),
    )) + "\n",
    "etc/initramfs-tools/conf.d/kestrel.conf": "MODULES=list\nCOMPRESS=gzip\n",
    # Only what finds the root filesystem: a small initramfs unpacks fast under TCG.
    "usr/share/initramfs-tools/modules.d/kestrel": "\n".join((
        "virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "ahci", "ata_piix", "ext4",
    )) + "\n",
}
# Run in the finished root (chroot) before it becomes a filesystem.
CUSTOMIZE = f"""set -e
systemctl enable systemd-networkd.service
systemctl mask {' '.join(MASKED_UNITS)}
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/* /var/log/*.log /var/cache/debconf/*-old
"""
# Bump when the build steps (not the lists above) change the image.
BUILD_VERSION = "1"


def recipe() -> str:
    """What the image is made of; the cache key."""
    parts = [BUILD_VERSION, SUITE, *MIRRORS, *PACKAGES, str(VIRTUAL_SIZE_MIB), str(BOOT_MIB),
             KERNEL_CMDLINE, CUSTOMIZE, bootdisk.syslinux_config("")]
    for files in (EARLY_FILES, FILES):
        for path in sorted(files):
            parts += [path, files[path]]
    return image_cache.recipe_hash(parts)


def image_path(state_dir: str) -> str:
    return os.path.join(image_cache.images_dir(state_dir), f"debian-12-{recipe()}.qcow2")


def debian_image(state_dir: str) -> str:
    """Path of the Debian 12 guest image (qcow2), built first when missing."""
    return image_cache.cached(image_path(state_dir), _build)


def _build(work: str, output: str) -> None:
    root = os.path.join(work, "root")
    early = _write_tree(os.path.join(work, "early"), EARLY_FILES)
    overlay = _write_tree(os.path.join(work, "overlay"), FILES)
    hook = os.path.join(work, "customize.sh")
    with open(hook, "w") as out:
        out.write(CUSTOMIZE)
    root_uuid = str(uuid.uuid4())
    # No fsck at boot (pass 0): seconds under TCG, and the journal keeps ext4 consistent.
    fstab = f"UUID={root_uuid} / ext4 defaults,noatime,errors=remount-ro 0 0\n"
    try:
        run(["mmdebstrap", "--quiet", "--mode=root", "--variant=minbase",
             f"--include={','.join(PACKAGES)}",
             f"--setup-hook=sync-in {early} /",
             f"--customize-hook=sync-in {overlay} /",
             f"--customize-hook=printf %s '{fstab}' > \"$1/etc/fstab\"",
             f"--customize-hook=chroot \"$1\" sh < {hook}",
             SUITE, root, *MIRRORS])
    except LabError as exc:
        raise GuestBuildError(f"mmdebstrap failed: {exc.message}") from exc
    kernel, initrd = _boot_files(root)
    bootdisk.make_disk(work, output, kernel=kernel, initrd=initrd,
                       cmdline=f"root=UUID={root_uuid} ro {KERNEL_CMDLINE}",
                       boot_mib=BOOT_MIB, root_dir=root,
                       root_mib=VIRTUAL_SIZE_MIB - BOOT_MIB - bootdisk.FIRST_PARTITION_MIB,
                       root_uuid=root_uuid)


def _write_tree(directory: str, files: dict[str, str]) -> str:
    for path, content in files.items():
        target = os.path.join(directory, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as out:
            out.write(content)
    return directory


def _boot_files(root: str) -> tuple[str, str]:
    kernels = sorted(glob.glob(os.path.join(root, "boot", "vmlinuz-*")))
    initrds = sorted(glob.glob(os.path.join(root, "boot", "initrd.img-*")))
    if len(kernels) != 1 or len(initrds) != 1:
        raise GuestBuildError(f"expected one kernel and one initrd in /boot, found "
                              f"{[os.path.basename(p) for p in kernels + initrds]}")
    return kernels[0], initrds[0]
