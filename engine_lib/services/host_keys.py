"""A host's SSH host keys: recorded once, checked by every SSH login to the host.

The engine logs in to its hosts as root (reinstall, soft fencing). A login that
accepts whatever key answers hands the engine's commands - and, on reinstall, a
certificate signed for the host - to anyone who can answer at the host's address.
So each host's keys are recorded when it is enrolled, never learned from an SSH
connection: given by the operator (``ssh_host_keys``), or reported by the host's
agent over mutual TLS (its certificate, from the engine CA, names the host).
Every login then passes exactly those keys to ssh under the host's name
(``HostKeyAlias``) with ``StrictHostKeyChecking=yes``: a key that changed fails
the login until the operator gives the new one.

Stored as known_hosts key lines ("type base64", comments dropped), one a line,
sorted; the file ssh reads is written from them, 0600, under ENGINE_DIR/ssh.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
from pathlib import Path

from sqlalchemy import select

from engine_lib import engine_key
from engine_lib.model import Host
from engine_lib.protocol.errors import Conflict, InvalidSpec

KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"})
MAX_KEYS = 16
MAX_KEY_CHARS = 8192  # a 16384-bit RSA key is about 2800
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


class HostKeyMissing(Conflict):
    code = "HostKeyMissing"


def normalize(field: str, value) -> str:
    """Keys as stored, from a list of key lines (or one text of lines): each
    ``type base64 [comment]`` with a known type whose blob names that type."""
    lines = value.splitlines() if isinstance(value, str) else value
    if not isinstance(lines, (list, tuple)) or not lines:
        raise InvalidSpec(field, "must be a non-empty list of SSH public host keys, such as "
                          "the lines of /etc/ssh/ssh_host_ed25519_key.pub")
    if len(lines) > MAX_KEYS:
        raise InvalidSpec(field, f"must hold at most {MAX_KEYS} keys (got {len(lines)})")
    keys = set()
    for line in lines:
        if not isinstance(line, str) or len(line) > MAX_KEY_CHARS:
            raise InvalidSpec(field, "each key must be one line of text of at most "
                              f"{MAX_KEY_CHARS} characters")
        keys.add(_key(field, line))
    return "\n".join(sorted(keys))


def _key(field: str, line: str) -> str:
    parts = line.split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES or not _BASE64.fullmatch(parts[1]):
        raise InvalidSpec(field, f"{line[:60]!r} is not an SSH public host key "
                          f"('TYPE BASE64', TYPE one of {', '.join(sorted(KEY_TYPES))})")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        named = blob[4:4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        named = ""
    if named != parts[0]:
        raise InvalidSpec(field, f"the {parts[0]} key's data is not a {parts[0]} key")
    return f"{parts[0]} {parts[1]}"


def reported(caps: dict) -> str:
    """The keys an agent reported (``ssh_host_keys`` in GET /host); "" when none or unusable."""
    try:
        return normalize("ssh_host_keys", caps.get("ssh_host_keys"))
    except InvalidSpec:
        return ""


def listed(stored: str) -> list[str]:
    return stored.splitlines()


def alias(host_name: str) -> str:
    """The name the keys are known under: the host's, so a new address keeps them."""
    return f"kestrel-host-{host_name}"


def login_options(engine_dir, host_name: str, stored: str) -> list[str]:
    """ssh options that accept exactly the host's recorded keys (writes the file they name)."""
    if not stored:
        raise HostKeyMissing(
            f"no SSH host key is recorded for host '{host_name}': the engine does not log in to "
            "a host it cannot authenticate. Its agent reports its keys over mutual TLS (an "
            "older agent does not: reinstall it with the kestrel.virt.host role), or give them "
            "as ssh_host_keys (the host's /etc/ssh/ssh_host_*_key.pub)", host=host_name)
    directory = engine_key.ssh_dir(engine_dir) / "known_hosts.d"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / host_name
    _write_private(path, "".join(f"{alias(host_name)} {key}\n" for key in listed(stored)))
    return ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={path}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"HostKeyAlias={alias(host_name)}",
            "-o", "UpdateHostKeys=no", "-o", "CheckHostIP=no"]


def _write_private(path: Path, text: str) -> None:
    """0600 from the start, replaced whole (another process may be reading the old one)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(text)
    os.replace(temporary, path)


def record(session, host_name: str, stored: str) -> bool:
    """Set the host's keys (the operator's word); True when they changed."""
    host = session.execute(select(Host).where(Host.name == host_name)).scalar_one()
    changed = host.ssh_host_keys != stored
    host.ssh_host_keys = stored
    return changed
