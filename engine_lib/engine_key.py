"""The engine's SSH key: how the engine reaches its hosts as root.

Reinstalling a host (services.host_deploy) and soft fencing (fencing) log in
with it. One ed25519 pair in ``ENGINE_DIR/ssh``, made by ``kestrel engine init``
and never regenerated: hosts authorize its public half (the host role's
``kestrel_host_authorize_engine_key``), so a new pair would lock the engine
out of every host. The hosts' own SSH host keys are recorded with each host
(services.host_keys) and only those are accepted; the files ssh reads them
from are written under ``ssh/known_hosts.d``.

Standard library only (ssh-keygen does the cryptography).
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from engine_lib.protocol.errors import Conflict

KEY_NAME = "id_ed25519"


class EngineKeyMissing(Conflict):
    code = "EngineKeyMissing"


def ssh_dir(engine_dir) -> Path:
    return Path(engine_dir) / "ssh"


def private_key(engine_dir) -> Path:
    return ssh_dir(engine_dir) / KEY_NAME


def ensure(engine_dir) -> bool:
    """Create the key pair unless it exists; True when it was created now."""
    directory = ssh_dir(engine_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key = private_key(engine_dir)
    created = False
    if not key.exists():
        # ssh-keygen writes the private key 0600 itself; a passphrase would stop the engine
        # from using it unattended.
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                        "-C", f"kestrel-engine@{socket.gethostname()}", "-f", str(key)],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)
        created = True
    os.chmod(key, 0o600)
    public = key.with_name(KEY_NAME + ".pub")
    if not public.exists():  # only the public half was lost: derive it, keep the key
        derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], check=True,
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL)
        public.write_text(derived.stdout)
    return created


def require(engine_dir) -> Path:
    """The private key's path; a clear error when ``kestrel engine init`` never made it."""
    key = private_key(engine_dir)
    if not key.is_file():
        raise EngineKeyMissing(f"the engine has no SSH key at {key}: run `kestrel engine init` "
                               "(it creates one), then authorize it on the hosts with the "
                               "kestrel.virt.host role", path=str(key))
    return key


def public_key(engine_dir) -> str:
    """The public key line hosts put in root's authorized_keys."""
    public = require(engine_dir).with_name(KEY_NAME + ".pub")
    if not public.is_file():
        ensure(engine_dir)  # derives the public half from the existing key
    return public.read_text(encoding="ascii").strip()
