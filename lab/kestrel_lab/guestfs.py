"""A fixed libguestfs appliance, so virt-sysprep runs on this machine.

libguestfs boots a small VM (the appliance) that supermin builds from the
host's kernel and its /lib/modules. This machine's kernel has no modules and
no /lib/modules, so supermin finds no kernel; given a Debian kernel package's
kernel and modules (SUPERMIN_KERNEL, SUPERMIN_MODULES) it still fails, on
``lstat /lib/modules`` while copying the modules. So the appliance is built
once, with /lib/modules made to exist only for supermin (an overlay on
/usr/lib in a private mount namespace), as a fixed appliance: the agent's
``[seal] appliance`` (LIBGUESTFS_PATH) then boots it with no supermin run.

It must match the installed libguestfs (its daemon is inside), so it is
rebuilt when libguestfs or the kernel package changes.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

from kestrel_lab import guest
from kestrel_lab.errors import GuestBuildError
from kestrel_lab.process import run

STAMP_NAME = "appliance.stamp"
FILES = ("kernel", "initrd", "root", "README.fixed")


def build(dest_dir: str) -> str:
    """The fixed appliance directory ``dest_dir``, built unless it is current."""
    stamp = _stamp()
    if all(os.path.exists(os.path.join(dest_dir, n)) for n in FILES) \
            and guest._read(os.path.join(dest_dir, STAMP_NAME)) == stamp:
        return dest_dir
    parent = os.path.dirname(os.path.abspath(dest_dir))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".guestfs-build-") as work:
        deb = guest._download(guest._kernel_package(), work)
        tree = os.path.join(work, "kernel")
        run(["dpkg-deb", "-x", deb, tree])
        modules_root = _modules_root(tree)
        version = os.listdir(modules_root)[0]
        run(["depmod", "-b", os.path.dirname(os.path.dirname(modules_root)), version])
        vmlinuz = glob.glob(os.path.join(tree, "boot", f"vmlinuz-{version}"))
        if not vmlinuz:
            raise GuestBuildError(f"{deb} holds no /boot/vmlinuz-{version}")
        appliance = os.path.join(work, "appliance")
        os.mkdir(appliance)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SUPERMIN_KERNEL": vmlinuz[0],
               "SUPERMIN_MODULES": os.path.join(modules_root, version),
               "SUPERMIN_KERNEL_VERSION": version}
        supermin = ["supermin", "--build", "-f", "ext2", "--copy-kernel", "--host-cpu",
                    os.uname().machine, "-o", appliance, _supermin_dir()]
        run(_with_lib_modules(supermin, work), env=env)
        open(os.path.join(appliance, "README.fixed"), "w").close()
        with open(os.path.join(appliance, STAMP_NAME), "w") as out:
            out.write(stamp)
        if os.path.isdir(dest_dir):
            shutil.rmtree(dest_dir)
        os.replace(appliance, dest_dir)
    return dest_dir


def _stamp() -> str:
    libguestfs = run(["dpkg-query", "-W", "-f", "${Version}", "libguestfs0"]).stdout
    return f"{guest._kernel_package()} libguestfs {libguestfs}\n"


def _modules_root(tree: str) -> str:
    for candidate in ("lib/modules", "usr/lib/modules"):
        path = os.path.join(tree, candidate)
        if os.path.isdir(path) and os.listdir(path):
            return path
    raise GuestBuildError(f"{tree} holds no kernel modules")


def _supermin_dir() -> str:
    found = glob.glob("/usr/lib/*/guestfs/supermin.d")
    if not found:
        raise GuestBuildError("no libguestfs supermin.d (install guestfs-tools)")
    return found[0]


def _with_lib_modules(argv: list[str], work: str) -> list[str]:
    """``argv``, run where /lib/modules exists (supermin lstat()s it)."""
    if os.path.isdir("/lib/modules"):
        return argv
    upper, scratch = os.path.join(work, "upper"), os.path.join(work, "overlay-work")
    os.makedirs(os.path.join(upper, "modules"))
    os.mkdir(scratch)
    lib = os.path.realpath("/lib")
    script = (f'mount -t overlay overlay -o "lowerdir={lib},upperdir={upper},'
              f'workdir={scratch}" {lib} && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "supermin",
            *argv]
