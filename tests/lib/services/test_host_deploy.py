"""Host reinstall decisions (services.host_deploy) with FakeAgents and a scripted host shell.

The real thing over SSH on lab hosts: tests/system/test_host_reinstall.py.
"""

from __future__ import annotations

import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from engine_lib import engine_key, pki
from engine_lib.protocol.errors import Conflict, InvalidSpec
from engine_lib.services.host_deploy import (
    Completed,
    HostDeploy,
    HostDeployFailed,
    HostKeyChanged,
    SshRemote,
)

REFUSED = Completed(255, b"", b"root@10.0.0.1: Permission denied (publickey).")
KEY_CHANGED = Completed(255, b"", b"@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
                        b"@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n"
                        b"Host key verification failed.\r\n")


def ssh_host_key() -> str:
    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def csr_for(key, name: str) -> bytes:
    return x509.CertificateSigningRequestBuilder().subject_name(x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, name)])).sign(key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM)


class ScriptedHost:
    """Answers the commands reinstall sends to a host, the way a healthy host would;
    ``fail`` maps a step's label to the answer that step gets instead."""

    def __init__(self, version="0.1.0", cert_valid=True):
        self.version, self.cert_valid = version, cert_valid
        self.commands: list[str] = []
        self.fail: dict[str, Completed] = {}
        self.uploaded = b""
        self.installed_cert = b""
        self.pid = 100
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.new_key = None
        self.cert = b""  # the agent certificate on the host
        self.csr_name = ""  # a host that answers a CSR for another name, if set

    def enroll(self, pki_dir: str, name: str = "h1", address: str = "10.0.0.1") -> None:
        """The certificate the host role enrolled for the host's key."""
        self.cert = pki.sign_csr(pki_dir, csr_for(self.key, name), name, [address])

    def run(self, command, input=None, timeout=None):
        label = command[3] if command[:2] == ["sh", "-c"] else " ".join(command[:2])
        self.commands.append(label)
        if label in self.fail:
            return self.fail[label]
        if label == "kestrel-upload":
            self.uploaded = input
        elif label == "kestrel-install":
            return Completed(0, f"{self.version}\n".encode(), b"")
        elif label == "openssl x509":
            return Completed(0 if self.cert_valid else 1, b"", b"")
        elif label == "openssl req":
            return Completed(0, csr_for(self.key, self.csr_name or command[-1][4:]), b"")
        elif label == "cat /etc/kestrel/pki/agent.pem":
            return Completed(0, self.cert, b"")
        elif label == "kestrel-new-key":
            self.new_key = ec.generate_private_key(ec.SECP256R1())
            return Completed(0, csr_for(self.new_key, command[-1]), b"")
        elif label == "kestrel-rekey":
            self.key, self.new_key = self.new_key, None
            self.installed_cert = self.cert = input
        elif label == "kestrel-cert":
            self.installed_cert = self.cert = input
        elif label == "kestrel-restart":
            old, self.pid = self.pid, self.pid + 1
            return Completed(0, f"old={old} pid={self.pid}\n".encode(), b"")
        return Completed(0, b"", b"")


@pytest.fixture
def shell():
    return ScriptedHost()


@pytest.fixture
def deploy(engine, shell):
    engine_key.ensure(engine.config.engine_dir)
    pki.init_ca(str(engine.config.pki_dir))
    shell.enroll(str(engine.config.pki_dir))
    return HostDeploy(engine, remote_factory=lambda *_: shell, start_timeout=1)


@pytest.fixture
def h1(engine, cluster):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster, ssh_host_keys=[ssh_host_key()])
    return "h1"


def host(engine, name="h1"):
    return engine.hosts.info(name)[0]


def messages(engine, name="h1"):
    return [e["message"] for e in engine.events.info(entity_type="host", entity_name=name)]


def test_reinstall_moves_the_host_to_maintenance_installs_restarts_and_activates(
        engine, deploy, shell, h1):
    outcome = deploy.reinstall(h1)

    assert outcome.changed
    assert shell.commands == ["true", "kestrel-upload", "kestrel-install", "openssl x509",
                              "kestrel-restart"]
    build = deploy.build()
    assert shell.uploaded == open(build.path, "rb").read()
    row = host(engine)
    assert (row["status"], row["agent_version"], row["agent_wheel_sha256"]) == (
        "Up", build.version, build.sha256)
    assert row["agent_installed_at"] and row["install_error"] == ""
    story = messages(engine)
    assert story[-4].startswith("host is in Maintenance")
    assert story[-3].startswith("host reinstall started (was Maintenance)")
    assert "certificate kept" in story[-2] and "pid 100 -> 101" in story[-2]
    assert story[-1] == "host activated: Up (was Maintenance)"
    assert outcome.diff["before"]["agent_version"] == ""
    assert outcome.diff["after"] == {"status": "Up", "agent_version": build.version,
                                     "agent_wheel_sha256": build.sha256}


def test_a_host_with_the_engines_build_is_not_reinstalled_unless_forced(
        engine, deploy, shell, h1):
    deploy.reinstall(h1)
    shell.commands.clear()

    again = deploy.reinstall(h1)
    assert not again.changed and shell.commands == []
    assert deploy.reinstall(h1, check_mode=True).changed is False

    forced = deploy.reinstall(h1, force=True)
    assert forced.changed and "kestrel-restart" in shell.commands
    assert "forced" in messages(engine)[-3]


def test_check_mode_predicts_the_reinstall_and_touches_nothing(engine, deploy, shell, h1):
    predicted = deploy.reinstall(h1, check_mode=True, activate=False)

    assert predicted.changed and shell.commands == []
    assert predicted.entity["status"] == "Maintenance"
    assert predicted.entity["agent_version"] == deploy.build().version
    assert (host(engine)["status"], host(engine)["agent_version"]) == ("Up", "")


def test_activate_false_leaves_the_host_in_maintenance(engine, deploy, h1):
    deploy.reinstall(h1, activate=False)

    assert host(engine)["status"] == "Maintenance"
    assert host(engine)["agent_version"] == deploy.build().version


def test_ssh_refusing_the_key_leaves_the_host_install_failed_with_the_reason(
        engine, deploy, shell, h1):
    engine.hosts.maintenance(h1)
    shell.fail["kestrel-upload"] = REFUSED

    with pytest.raises(HostDeployFailed, match="copying the agent wheel: exit 255: .*"
                                               "Permission denied") as err:
        deploy.reinstall(h1)

    assert err.value.details["step"] == "copying the agent wheel"
    row = host(engine)
    assert row["status"] == "InstallFailed" and row["agent_version"] == ""
    assert "Permission denied (publickey)" in row["install_error"]
    assert "host reinstall failed at copying the agent wheel" in messages(engine)[-1]
    assert shell.commands == ["true", "kestrel-upload"]  # nothing after the failed step

    # A failed install is retried by the next run, which clears the error.
    shell.fail.clear()
    assert deploy.reinstall(h1).changed
    assert (host(engine)["status"], host(engine)["install_error"]) == ("Up", "")


def test_an_agent_that_does_not_come_back_fails_the_reinstall(engine, agents, deploy, h1):
    engine.hosts.maintenance(h1)
    agents["10.0.0.1"].reachable = False

    with pytest.raises(HostDeployFailed, match="waiting for the agent: it did not answer"):
        deploy.reinstall(h1)
    assert host(engine)["status"] == "InstallFailed"


def test_a_venv_reporting_another_version_fails_the_install(engine, deploy, shell, h1):
    shell.version = "0.0.9"

    with pytest.raises(HostDeployFailed, match="reports engine_lib '0.0.9'"):
        deploy.reinstall(h1)
    assert host(engine)["status"] == "InstallFailed"
    assert "kestrel-restart" not in shell.commands  # the old agent keeps running


def test_a_certificate_that_expires_soon_is_re_enrolled_with_the_engine_ca(
        engine, deploy, shell, h1):
    shell.cert_valid = False

    deploy.reinstall(h1)

    assert shell.commands[3:7] == ["openssl x509", "cat /etc/kestrel/pki/agent.pem",
                                   "openssl req", "kestrel-cert"]
    cert = x509.load_pem_x509_certificate(shell.installed_cert)
    ca = x509.load_pem_x509_certificate(open(engine.config.pki_dir / "ca.pem", "rb").read())
    assert cert.issuer == ca.subject
    assert cert.public_key().public_numbers() == shell.key.public_key().public_numbers()
    assert "certificate renewed" in messages(engine)[-2]


def test_renew_certificate_reinstalls_even_an_up_to_date_host(engine, deploy, shell, h1):
    deploy.reinstall(h1)
    shell.commands.clear()

    assert deploy.reinstall(h1, renew_certificate=True).changed
    assert "openssl req" in shell.commands and "openssl x509" not in shell.commands
    assert "kestrel-new-key" not in shell.commands  # the host keeps its key


def serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def test_a_reinstall_keeps_the_hosts_certificate_and_key(engine, deploy, shell, h1):
    before, key = serial(shell.cert), shell.key
    deploy.reinstall(h1, force=True)
    assert serial(shell.cert) == before and shell.key is key
    assert "kestrel-cert" not in shell.commands and "kestrel-rekey" not in shell.commands


def test_a_renewal_signs_only_a_request_for_the_enrolled_key(engine, deploy, shell, h1):
    enrolled = serial(shell.cert)
    shell.key = ec.generate_private_key(ec.SECP256R1())  # what answers has another key

    with pytest.raises(HostDeployFailed, match="the CSR is for another key than the host's "
                                               "certificate holds: refused"):
        deploy.reinstall(h1, renew_certificate=True)
    assert serial(shell.cert) == enrolled and "kestrel-cert" not in shell.commands
    assert host(engine)["status"] == "InstallFailed"


def test_a_renewal_signs_no_request_for_another_name(engine, deploy, shell, h1):
    shell.csr_name = "kestrel-engine"
    with pytest.raises(HostDeployFailed, match="the CSR names 'kestrel-engine', not 'h1'"):
        deploy.reinstall(h1, renew_certificate=True)
    assert "kestrel-cert" not in shell.commands


def test_a_renewal_needs_the_current_certificate_from_the_engine_ca(
        engine, deploy, shell, h1, tmp_path):
    other_ca = tmp_path / "other-ca"
    pki.init_ca(str(other_ca))
    shell.enroll(str(other_ca))
    with pytest.raises(HostDeployFailed, match="not a certificate of the engine CA"):
        deploy.reinstall(h1, renew_certificate=True)
    shell.enroll(str(engine.config.pki_dir), name="h2")
    with pytest.raises(HostDeployFailed, match="names 'h2', not 'h1'"):
        deploy.reinstall(h1, renew_certificate=True)


def test_enroll_certificate_re_keys_the_host(engine, deploy, shell, h1):
    old_key, old_serial = shell.key, serial(shell.cert)

    assert deploy.reinstall(h1, enroll_certificate=True).changed

    assert "kestrel-new-key" in shell.commands and "openssl req" not in shell.commands
    cert = x509.load_pem_x509_certificate(shell.cert)
    assert cert.serial_number != old_serial and shell.key is not old_key
    assert cert.public_key().public_numbers() == shell.key.public_key().public_numbers()
    assert "certificate re-keyed" in messages(engine)[-2]


def test_a_changed_ssh_host_key_refuses_the_reinstall_before_anything_changes(
        engine, deploy, shell, h1):
    shell.fail["true"] = KEY_CHANGED
    with pytest.raises(HostKeyChanged, match="SSH host key of 10.0.0.1 is not the one recorded "
                                             "for host 'h1'.*give the new key as ssh_host_keys"):
        deploy.reinstall(h1)
    assert shell.commands == ["true"]
    assert (host(engine)["status"], host(engine)["agent_version"]) == ("Up", "")

    # The operator gives the new key: it is recorded once a login with it worked.
    shell.fail.clear()
    new_key = ssh_host_key()
    assert deploy.reinstall(h1, ssh_host_keys=[new_key + " root@h1"]).changed
    assert host(engine)["ssh_host_keys"] == [new_key]
    assert any("SSH host keys replaced" in m for m in messages(engine))


def test_a_host_without_recorded_ssh_host_keys_is_not_logged_in_to(engine, cluster, shell):
    engine_key.ensure(engine.config.engine_dir)
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)  # its agent reports none
    assert host(engine)["ssh_host_keys"] == []

    with pytest.raises(Conflict, match="no SSH host key is recorded for host 'h1'"):
        HostDeploy(engine).reinstall("h1")
    assert host(engine)["status"] == "Up"


def test_a_vm_that_cannot_move_refuses_the_reinstall_and_nothing_changes(
        engine, deploy, shell, h1):
    engine.vms.ensure({"name": "stuck", "cluster": "c1", "memory": 256}, state="running")

    with pytest.raises(Conflict, match="cannot go to maintenance"):
        deploy.reinstall(h1)
    assert shell.commands == ["true"]  # the host key check only
    assert (host(engine)["status"], host(engine)["agent_version"]) == ("Up", "")


def test_without_the_engine_key_nothing_changes(engine, shell, h1):
    deploy = HostDeploy(engine, remote_factory=lambda *_: shell)

    with pytest.raises(Conflict, match="no SSH key at .*kestrel engine init"):
        deploy.reinstall(h1)
    assert host(engine)["status"] == "Up" and shell.commands == []


def test_bad_options_name_the_field(deploy, h1):
    with pytest.raises(InvalidSpec, match="^force: must be true or false"):
        deploy.reinstall(h1, force="yes")
    with pytest.raises(InvalidSpec, match="^timeout: must be a positive"):
        deploy.reinstall(h1, timeout=0)


def test_ssh_gets_an_argv_with_the_engine_key_and_a_quoted_remote_command(tmp_path):
    remote = SshRemote("10.0.0.1", "/e/ssh/id_ed25519",
                       ["-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=kestrel-host-h1"])

    argv = remote.argv(["sh", "-c", 'echo "$1"', "label", "a b; rm -rf /"])

    assert argv[:3] == ["ssh", "-i", "/e/ssh/id_ed25519"]
    for option in ("BatchMode=yes", "StrictHostKeyChecking=yes",
                   "HostKeyAlias=kestrel-host-h1", "IdentitiesOnly=yes"):
        assert option in argv
    assert argv[-3:-1] == ["--", "10.0.0.1"]
    assert argv[-1] == """sh -c 'echo "$1"' label 'a b; rm -rf /'"""
    with pytest.raises(InvalidSpec, match="^address: "):
        SshRemote("-oProxyCommand=touch /tmp/x", "k", "kh")


def test_the_engine_key_is_made_once_and_kept(tmp_path):
    assert engine_key.ensure(tmp_path) is True
    key = engine_key.private_key(tmp_path)
    first = key.read_bytes()

    assert engine_key.ensure(tmp_path) is False
    assert key.read_bytes() == first
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(engine_key.ssh_dir(tmp_path)).st_mode) == 0o700
    assert engine_key.public_key(tmp_path).startswith("ssh-ed25519 ")


def test_engine_init_makes_the_key_once_and_ssh_key_prints_its_public_half(tmp_path, capsys):
    from engine_lib import cli

    args = ["--engine-dir", str(tmp_path), "--db-url", f"sqlite:///{tmp_path}/e.db"]
    assert cli.main(["engine", "init", *args]) == 0
    assert "id_ed25519: created" in capsys.readouterr().out
    first = engine_key.private_key(tmp_path).read_bytes()
    assert cli.main(["engine", "init", *args]) == 0
    assert "id_ed25519: kept" in capsys.readouterr().out
    assert engine_key.private_key(tmp_path).read_bytes() == first

    assert cli.main(["engine", "ssh-key", *args]) == 0
    assert capsys.readouterr().out.strip() == \
        engine_key.private_key(tmp_path).with_suffix(".pub").read_text().strip()
