"""The cloud-init NoCloud payload: an ISO 9660 image labelled "cidata", built on the host.

The engine renders the payload's files into the domain metadata
(``<kestrel:payload alias=... type='nocloud'><kestrel:file name='user-data'>...``)
and a CD-ROM whose source is the payload placeholder. The agent takes the
files out of the XML before anything else sees it (user-data may hold a root
password, and libvirt shows a domain's metadata on its read-only socket),
writes them onto an ISO readable by its owner only at that placeholder's host
path before the domain is defined, and deletes the ISO when the VM is removed.

Why genisoimage: it is the tool cloud-init's own NoCloud documentation uses
(``genisoimage -volid cidata -joliet -rock``), it is a Debian package the host
role installs anyway (scripts/install-system-deps.sh), and it keeps the agent
standard library + libvirt only; a pure-Python ISO writer (pycdlib) would be
one more package on every hypervisor for a file written once per start.
xorriso's genisoimage emulation (``xorriso -as genisoimage``) is the fallback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from engine_lib.protocol import metadata
from engine_lib.protocol.errors import InvalidSpec, PayloadError

VOLUME_LABEL = "cidata"
# The files NoCloud reads; anything else on the ISO would be ignored by cloud-init,
# so a name outside this list is a mistake in the engine's rendering, not data.
FILE_NAMES = ("meta-data", "user-data", "network-config", "vendor-data")
REQUIRED = ("meta-data", "user-data")
_TIMEOUT = 60.0
_NS = {metadata.PREFIX: metadata.NAMESPACE}


@dataclass(frozen=True)
class Payload:
    alias: str
    files: tuple[tuple[str, str], ...]  # (name, content), in the engine's order


def take(domain: ET.Element) -> Payload | None:
    """Remove the payload from the domain's metadata and return it (None if there is none)."""
    vm = domain.find(f"metadata/{metadata.PREFIX}:vm", _NS)
    seed = read(domain)
    if vm is not None:
        for node in vm.findall(f"{metadata.PREFIX}:payload", _NS):
            vm.remove(node)
    return seed


def read(domain: ET.Element) -> Payload | None:
    """The payload the engine put in the domain's metadata, or None.

    Raises InvalidSpec naming the file when a name is not a NoCloud file, a
    file appears twice, or meta-data/user-data is missing: such a payload
    would boot a guest that silently ignores it.
    """
    node = domain.find(f"metadata/{metadata.PREFIX}:vm/{metadata.PREFIX}:payload", _NS)
    if node is None:
        return None
    kind = node.get("type", "nocloud")
    if kind != "nocloud":
        raise InvalidSpec("payload.type", f"'{kind}' is not supported; only 'nocloud' is")
    files: dict[str, str] = {}
    for item in node.findall(f"{metadata.PREFIX}:file", _NS):
        name = item.get("name", "")
        if name not in FILE_NAMES:
            raise InvalidSpec("payload.file", f"'{name}' is not a NoCloud file "
                                              f"(expected one of {', '.join(FILE_NAMES)})")
        if name in files:
            raise InvalidSpec("payload.file", f"'{name}' appears twice")
        files[name] = item.text or ""
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise InvalidSpec("payload.file", f"the payload lacks {', '.join(missing)}")
    return Payload(alias=node.get("alias", ""), files=tuple(files.items()))


def _tool() -> list[str]:
    if shutil.which("genisoimage"):
        return ["genisoimage"]
    if shutil.which("xorriso"):
        return ["xorriso", "-as", "genisoimage"]
    raise PayloadError("cannot build the cloud-init payload ISO: neither genisoimage nor "
                       "xorriso is installed on this host (scripts/install-system-deps.sh "
                       "installs both)")


def build(payload: Payload, path: str) -> str:
    """Write ``payload`` as a NoCloud ISO at ``path`` (replaced atomically); return ``path``.

    Always rewritten: the engine may have changed the user data since the
    last start, and a stale seed is worse than a rebuild of a few KiB.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".payload-") as work:
        names = []
        for name, content in payload.files:
            with open(os.path.join(work, name), "w", encoding="utf-8") as handle:
                handle.write(content)
            names.append(name)
        tmp_iso = os.path.join(work, "payload.iso")
        argv = [*_tool(), "-quiet", "-output", tmp_iso, "-volid", VOLUME_LABEL,
                "-joliet", "-rock", *names]
        try:
            result = subprocess.run(argv, cwd=work, capture_output=True, text=True,
                                    timeout=_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PayloadError(f"cannot build the payload ISO {path}: {exc}",
                               path=path) from None
        if result.returncode != 0:
            raise PayloadError(f"{argv[0]} failed to build the payload ISO {path} "
                               f"(exit {result.returncode}): {result.stderr.strip()}",
                               path=path, stderr=result.stderr.strip())
        # root only: libvirt hands the file to QEMU's user while the VM runs
        # (dynamic_ownership) and gives it back when it stops.
        os.chmod(tmp_iso, 0o600)
        os.replace(tmp_iso, path)
    return path


def remove(path: str) -> bool:
    """Delete the payload ISO; False when there was none."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
