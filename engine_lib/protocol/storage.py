"""Storage connection rules both sides apply: NFS export syntax, the mount limit."""

from __future__ import annotations

import re

# NFS gives up on an unreachable server only after minutes; the agent answers
# before this, and the engine's client waits a little longer than it.
MOUNT_TIMEOUT_S = 60.0
# server:/path; the server a host name or an IPv4/bracketed IPv6 address.
EXPORT_RE = re.compile(r"^(?P<server>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<path>/[^\x00\s]*)$")
