"""The engine CA's revocation list on this host: for the agent, libvirtd and QEMU.

The engine pushes its CRL when it removes a host (PUT /pki/crl); host deploy
writes the same files. A CRL that does not verify against the engine CA is
refused before anything is written: installed, it would make every TLS
handshake fail, including the engine's next push.

Where it goes:
- ``[pki] crl``: the agent's own; the server reloads it on the next connection;
- ``[pki] libvirt_crl`` (libvirt's cacrl.pem) and ``[pki] qemu_crl`` (QEMU's
  ca-crl.pem, read for each migration), only where libvirt TLS is set up with
  the engine CA (the CA file beside them is ours); libvirtd then reloads its TLS
  files (``virt-admin server-update-tls``), as it reads them only when it starts.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile

from engine_lib.agent.config import AgentConfig
from engine_lib.protocol.errors import InvalidSpec, KestrelError

log = logging.getLogger("kestrel.agent.crl")

MAX_CRL_BYTES = 4 * 1024 * 1024
OPENSSL_TIMEOUT_S = 30
_PEM_HEADER = "-----BEGIN X509 CRL-----"
# CRL file -> the CA certificate libvirt / QEMU read beside it.
_CA_BESIDE = {"libvirt_crl": "cacert.pem", "qemu_crl": "ca-cert.pem"}


def verify(pem: bytes, ca: str, field: str = "crl") -> None:
    """InvalidSpec (naming ``field``) unless ``pem`` is a CRL signed by the CA in ``ca``."""
    if len(pem) > MAX_CRL_BYTES:
        raise InvalidSpec(field, f"too large ({len(pem)} bytes; limit {MAX_CRL_BYTES})")
    if not pem.lstrip().startswith(_PEM_HEADER.encode()):
        raise InvalidSpec(field, "not a PEM certificate revocation list")
    try:
        result = subprocess.run(["openssl", "crl", "-noout", "-CAfile", ca], input=pem,
                                capture_output=True, timeout=OPENSSL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KestrelError(f"cannot check the CRL with openssl: {exc}") from None
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()
        raise InvalidSpec(field, f"not signed by the engine CA {ca} "
                                 f"({reason[0] if reason else 'openssl crl failed'})")


def install(config: AgentConfig, pem: bytes) -> dict:
    """Verify and write the CRL everywhere it applies; what was written and reloaded."""
    verify(pem, config.ca)
    written = []
    if config.crl:
        _write(config.crl, pem)
        written.append(config.crl)
    with open(config.ca, "rb") as handle:
        our_ca = handle.read()
    libvirt = False
    for key, ca_name in _CA_BESIDE.items():
        path = getattr(config, key)
        if path and _same_file_content(os.path.join(os.path.dirname(path), ca_name), our_ca):
            _write(path, pem)
            written.append(path)
            libvirt = libvirt or key == "libvirt_crl"
    return {"installed": written, "libvirtd_reloaded": _reload_libvirtd() if libvirt else False}


def _same_file_content(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read().strip() == data.strip()
    except OSError:
        return False


def _write(path: str, data: bytes) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".crl-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # public data; QEMU's group must read it too
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _reload_libvirtd() -> bool:
    """libvirtd re-reads its certificates and CRL; False (logged) when it cannot."""
    try:
        result = subprocess.run(["virt-admin", "server-update-tls", "libvirtd"],
                                capture_output=True, text=True, timeout=OPENSSL_TIMEOUT_S,
                                check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("libvirtd keeps its old CRL until it restarts: virt-admin failed (%s)", exc)
        return False
    if result.returncode != 0:
        log.error("libvirtd keeps its old CRL until it restarts: %s", result.stderr.strip())
        return False
    return True
