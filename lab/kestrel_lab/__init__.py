"""The lab: hypervisor hosts made of Linux namespaces, and a tiny test guest.

Used by the system tests, molecule scenarios and ``kestrel-lab``; never by the
product itself. Stdlib only, commands run as argument lists (root needed).
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
