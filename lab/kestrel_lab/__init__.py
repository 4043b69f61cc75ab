"""The lab: hypervisor hosts made of Linux namespaces, a tiny test guest, guest disk images.

Used by the system tests, molecule scenarios and ``kestrel-lab``; never by the
product itself. Stdlib only, commands run as argument lists (root needed).
Cached guest disks: ``kestrel_lab.debian_image.debian_image(state_dir)`` and
``kestrel_lab.guest_disk.tiny_disk_image(state_dir)`` (see those modules).
"""

from kestrel_lab.errors import GuestBuildError, LabError
from kestrel_lab.hosts import (
                                  DEFAULT_STATE_DIR,
                                  LabHost,
                                  daemons,
                                  down,
                                  ensure_guest,
                                  exec_argv,
                                  inventory_path,
                                  run_in,
                                  shared_dir,
                                  status,
                                  up,
)

__all__ = [
    "DEFAULT_STATE_DIR", "GuestBuildError", "LabError", "LabHost", "daemons", "down",
    "ensure_guest", "exec_argv", "inventory_path", "run_in", "shared_dir", "status", "up",
]
