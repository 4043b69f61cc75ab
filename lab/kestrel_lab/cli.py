"""The ``kestrel-lab`` command: bring lab hosts up and down, fence them, build the guests."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from kestrel_lab import debian_image, fence, guest, guest_disk, hosts
from kestrel_lab.errors import LabError


def up(args: argparse.Namespace) -> int:
    for host in hosts.up(args.hosts, args.state_dir):
        print(f"{host.name}: {host.address} up")
    print(f"inventory: {Path(args.state_dir) / 'inventory.yml'}")
    return 0


def down(args: argparse.Namespace) -> int:
    hosts.down(args.state_dir)
    print("lab is down")
    return 0


def status(args: argparse.Namespace) -> int:
    for host in hosts.status(args.state_dir):
        print(f"{host.name}: {host.address} pid {host.pid}")
    return 0


def execute(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return subprocess.call(hosts.exec_argv(args.host, command, args.state_dir))


def fence_host(args: argparse.Namespace) -> int:
    """The lab's fence device by hand (what scripts/fence_kestrel_lab does for the engine)."""
    code, message = fence.fence({"action": args.action, "plug": args.host,
                                 "state_dir": args.state_dir})
    print(message)
    return code


def build_guest(args: argparse.Namespace) -> int:
    kernel, initrd = guest.build(args.dest)
    print(f"kernel: {kernel}\ninitrd: {initrd}")
    return 0


# The cached guest disk images, by the name ``kestrel-lab image NAME`` takes.
IMAGES = {"debian": debian_image.debian_image, "tiny": guest_disk.tiny_disk_image}


def build_image(args: argparse.Namespace) -> int:
    print(IMAGES[args.name](args.state_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kestrel-lab",
                                     description="test hosts in network namespaces (root only)")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help_):
        sub = commands.add_parser(name, help=help_, description=help_)
        sub.set_defaults(func=func)
        return sub

    up_cmd = command("up", up, "bring up lab hosts (idempotent)")
    up_cmd.add_argument("--hosts", type=int, default=2)
    down_cmd = command("down", down, "stop every lab host and remove its traces")
    status_cmd = command("status", status, "list lab hosts")
    exec_cmd = command("exec", execute, "run a command inside a lab host")
    exec_cmd.add_argument("host")
    exec_cmd.add_argument("command", nargs=argparse.REMAINDER)
    fence_cmd = command("fence", fence_host, "power a lab host off/on like a fence "
                        "device (status exits 0 on, 2 off)")
    fence_cmd.add_argument("host")
    fence_cmd.add_argument("action", choices=["on", "off", "reboot", "status"])
    image_cmd = command("image", build_image, "print the path of a cached guest disk image "
                        "(debian: Debian 12 with cloud-init; tiny: the test guest), "
                        "building it first when its recipe changed")
    image_cmd.add_argument("name", choices=sorted(IMAGES))
    for sub in (up_cmd, down_cmd, status_cmd, exec_cmd, fence_cmd, image_cmd):
        sub.add_argument("--state-dir", default=hosts.DEFAULT_STATE_DIR)
    guest_cmd = command("guest", build_guest, "build the tiny test guest (kernel + initrd)")
    guest_cmd.add_argument("--dest", default=f"{hosts.DEFAULT_STATE_DIR}/shared/images")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LabError as err:
        print(f"kestrel-lab: {err.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
