"""SSH host keys for real: a lab host's agent reports its sshd's key over mutual TLS when
the host is added, and the engine's soft fence logs in to that key only - after the
host's sshd got another key, the soft fence is refused and nothing runs on it.
(Reinstall with a changed key: test_host_reinstall.py.)"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from engine_lib.loop.fencing import Fencer
from kestrel_lab import hostfs

pytestmark = pytest.mark.lab

HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"


def sshd_public_key(host) -> str:
    """The host's sshd key as the engine stores it: "type base64"."""
    parts = Path(hostfs.source(host.root, HOST_KEY + ".pub")).read_text().split()
    return f"{parts[0]} {parts[1]}"


@contextlib.contextmanager
def changed_host_key(host) -> Iterator[str]:
    """The host's sshd answers with a new key (its sshd reads the key file for every
    connection); the original key is put back afterwards. Yields the new public key."""
    private = Path(hostfs.source(host.root, HOST_KEY))
    public = Path(str(private) + ".pub")
    saved = private.read_bytes(), public.read_bytes()
    try:
        private.unlink()
        public.unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}",
                        "-f", str(private)], check=True, capture_output=True)
        yield sshd_public_key(host)
    finally:
        private.write_bytes(saved[0])
        public.write_bytes(saved[1])
        os.chmod(private, 0o600)


def test_soft_fencing_logs_in_only_to_the_key_recorded_at_enrollment(engine, agents, lab):
    h2 = next(agent for agent in agents if agent.name == "h2")
    engine.clusters.ensure("keys", virt_type="qemu",
                           fencing_policy={"skip_if_connectivity_broken": False})
    engine.hosts.ensure("h2", address=h2.address, cluster="keys", soft_fence_command="true")
    # Recorded from the agent's answer over mutual TLS, not from an SSH connection.
    assert engine.hosts.info("h2")[0]["ssh_host_keys"] == [sshd_public_key(h2.host)]
    fencer = Fencer(engine, lab[0].ssh_key, on_fenced=lambda *args: None)

    def soft_fence() -> str:
        with engine.store.transaction() as session:  # as the Monitor marks a silent host
            session.execute(text("UPDATE hosts SET status = 'NonResponsive', fence_state = '' "
                                 "WHERE name = 'h2'"))
        fencer.step("h2")
        return engine.events.info(entity_type="host", entity_name="h2")[-1]["message"]

    assert soft_fence() == "soft fence ('true' over SSH): sent - exit 0"
    with changed_host_key(h2.host):
        refused = soft_fence()
    assert refused.startswith("soft fence ('true' over SSH): failed - exit 255"), refused
    assert "Host key verification failed" in refused
    assert soft_fence() == "soft fence ('true' over SSH): sent - exit 0"  # its key is back
