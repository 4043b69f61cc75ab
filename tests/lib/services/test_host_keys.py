"""Hosts' SSH host keys: checked when given, recorded once at enrollment, the only keys
an SSH login to the host accepts (services.host_keys; for real: tests/system)."""

from __future__ import annotations

import os
import stat

import pytest
from conftest import FakeAgent
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services import host_keys
from engine_lib.services.host_keys import HostKeyMissing


def public(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


ED25519 = public(ed25519.Ed25519PrivateKey.generate())
RSA = public(rsa.generate_private_key(public_exponent=65537, key_size=1024))


class KeyedAgent(FakeAgent):
    """An agent that reports its host's SSH host keys, as GET /host does."""

    def __init__(self, name, keys):
        super().__init__(name)
        self.keys = keys

    def host_info(self, timeout=None):
        return {**super().host_info(timeout), "ssh_host_keys": self.keys}


def test_keys_are_stored_as_sorted_type_and_data_lines_without_comments():
    assert host_keys.normalize("k", [f"{RSA} root@h1", ED25519, ED25519]) == "\n".join(
        sorted([RSA, ED25519]))
    assert host_keys.normalize("k", f"{ED25519} c\n") == ED25519


@pytest.mark.parametrize("value", [
    [], None, "", ["ssh-ed25519"], ["ssh-dss AAAA"], ["ssh-ed25519 not*base64"],
    [ED25519.replace("ssh-ed25519", "ssh-rsa")],  # the data is another type's
    ["ssh-ed25519 AAAAB3NzaC1yc2E="], [ED25519] * 17, [ED25519 + " " + "x" * 9000], [7],
])
def test_bad_keys_name_the_field(value):
    with pytest.raises(InvalidSpec) as err:
        host_keys.normalize("ssh_host_keys", value)
    assert err.value.field == "ssh_host_keys"


def test_login_options_accept_exactly_the_recorded_keys_from_a_private_file(tmp_path):
    options = host_keys.login_options(tmp_path, "h1", host_keys.normalize("k", [ED25519, RSA]))
    assert "StrictHostKeyChecking=yes" in options and "HostKeyAlias=kestrel-host-h1" in options
    assert "GlobalKnownHostsFile=/dev/null" in options
    path = next(o.split("=", 1)[1] for o in options if o.startswith("UserKnownHostsFile="))
    assert sorted(open(path).read().splitlines()) == sorted(
        [f"kestrel-host-h1 {ED25519}", f"kestrel-host-h1 {RSA}"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(HostKeyMissing, match="no SSH host key is recorded for host 'h2'"):
        host_keys.login_options(tmp_path, "h2", "")


def test_a_host_records_the_keys_its_agent_reports_once(engine, agents, cluster):
    agents["10.0.0.1"] = KeyedAgent("10.0.0.1", [f"{ED25519} root@h1"])
    added = engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    assert added.entity["ssh_host_keys"] == [ED25519]

    # What answers later cannot replace them, by registration or heartbeat alike.
    agents["10.0.0.1"].keys = [RSA]
    again = engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    assert not again.changed and again.entity["ssh_host_keys"] == [ED25519]
    from engine_lib.loop.monitoring import Monitor

    Monitor(engine).cycle()
    assert engine.hosts.info("h1")[0]["ssh_host_keys"] == [ED25519]

    # Only the operator does.
    given = engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster, ssh_host_keys=[RSA])
    assert given.changed and given.entity["ssh_host_keys"] == [RSA]
    assert given.diff["before"]["ssh_host_keys"] == [ED25519]


def test_a_host_enrolled_by_an_older_agent_records_keys_at_its_next_answer(
        engine, agents, cluster):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)  # reports no keys
    assert engine.hosts.info("h1")[0]["ssh_host_keys"] == []
    agents["10.0.0.1"] = KeyedAgent("10.0.0.1", ["junk", ED25519])  # unusable: none recorded
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    assert engine.hosts.info("h1")[0]["ssh_host_keys"] == []
    agents["10.0.0.1"].keys = [ED25519]
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    assert engine.hosts.info("h1")[0]["ssh_host_keys"] == [ED25519]
