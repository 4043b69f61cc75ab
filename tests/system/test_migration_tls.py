"""Encrypted live migration for real: the host role's libvirt TLS on h1 and h2, then
engine, agents and libvirt daemons moving a running guest over qemu+tls with QEMU's
own stream in TLS (VIR_MIGRATE_TLS).

h3 keeps the lab's plain configuration: an encrypted migration to it must fail and
leave the guest on its source. At the end h1 and h2 get their libvirt configuration
back, their /etc/pki emptied and libvirtd restarted as the lab starts it, so the
other tests' qemu+tcp migrations see the lab as it was.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from agent_fixtures import is_alive, run_in_host
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import CertificateSigningRequestBuilder, Name, NameAttribute
from cryptography.x509.oid import NameOID
from engine_fixtures import _collections_path
from test_migration import assert_guest_runs, copies, tiny_guest, wait_for_console

import kestrel_lab
from engine_lib import pki
from engine_lib.protocol.errors import MigrationFailed
from kestrel_lab import hostfs
from kestrel_lab import hosts as lab_hosts

pytestmark = pytest.mark.lab

TLS_HOSTS = ("h1", "h2")
LIBVIRT_FILES = ("/etc/libvirt/libvirtd.conf", "/etc/libvirt/qemu.conf")
TLS_PORT = 16514
SLOW_MBPS = 80  # ~9 s for the idle guest: long enough to watch the connections


# -- the host role, on h1 and h2 ---------------------------------------------------------


def run_role(state_dir: str, engine_dir: Path, *args: str) -> dict[str, dict[str, int]]:
    """The role's libvirt TLS tasks on h1 and h2 over SSH; PLAY RECAP per host."""
    play = [{
        "hosts": ",".join(TLS_HOSTS),
        "gather_facts": False,
        "tasks": [{"ansible.builtin.include_role": {
            "name": "kestrel.virt.host", "tasks_from": "libvirt_tls.yml"}}],
        "vars": {"kestrel_host_engine_dir": str(engine_dir),
                 "kestrel_host_controller_kestrel": str(Path(sys.executable).parent / "kestrel"),
                 "kestrel_host_libvirtd_pidfile": hostfs.LIBVIRTD_PIDFILE},
    }]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch, "libvirt_tls.yml")
        path.write_text(json.dumps(play))
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": _collections_path(),
               "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_HOST_KEY_CHECKING": "false"}
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), str(path),
             "-i", lab_hosts.inventory_path(state_dir), *args],
            env=env, capture_output=True, text=True, timeout=600, check=False)
    recap = {m["host"]: {k: int(m[k]) for k in ("ok", "changed", "failed", "unreachable")}
             for m in re.finditer(r"^(?P<host>h\d)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)"
                                  r"\s+unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
                                  proc.stdout, re.MULTILINE)}
    if proc.returncode != 0 or set(recap) != set(TLS_HOSTS):
        raise AssertionError(f"ansible-playbook failed:\n{proc.stdout}\n{proc.stderr}")
    return recap


def in_host(agent, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return run_in_host(agent.host, argv, text=True, **kwargs)


def restart_libvirtd_as_the_lab_does(agent, state_dir: str) -> None:
    pid = int(in_host(agent, ["cat", hostfs.LIBVIRTD_PIDFILE]).stdout)
    os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while is_alive(pid):
        assert time.monotonic() < deadline, f"libvirtd {pid} on {agent.name} did not stop"
        time.sleep(0.2)
    kestrel_lab.up(len(kestrel_lab.status(state_dir)), state_dir)  # starts the dead daemon


@pytest.fixture(scope="module")
def tls_hosts(lab, agents, engine_dir, lab_state_dir):
    """h1 and h2 deployed with libvirt TLS by the host role; restored afterwards."""
    tls_agents = [a for a in agents if a.name in TLS_HOSTS]
    for agent in tls_agents:
        if in_host(agent, ["findmnt", "-n", "/etc/pki"], check=False).returncode != 0:
            pytest.fail(f"{agent.name}: /etc/pki is not private to the lab host (the lab "
                        "was brought up before hostfs made it private): run "
                        "'kestrel-lab down' and let the tests bring it up again")
    saved = {a.name: {f: in_host(a, ["cat", f]).stdout for f in LIBVIRT_FILES}
             for a in tls_agents}
    try:
        # Check mode first: it reports the changes and makes none.
        predicted = run_role(lab_state_dir, engine_dir, "--check")
        assert all(r["changed"] > 0 for r in predicted.values()), predicted
        for agent in tls_agents:
            assert in_host(agent, ["ls", "/etc/pki/libvirt"], check=False).stdout == ""
            assert in_host(agent, ["ss", "-Htln", f"sport = :{TLS_PORT}"]).stdout == ""
        first = run_role(lab_state_dir, engine_dir)
        assert all(r["changed"] > 0 for r in first.values()), first
        again = run_role(lab_state_dir, engine_dir)
        assert all(r["changed"] == 0 for r in again.values()), f"not idempotent: {again}"
        yield tls_agents
    finally:
        for agent in tls_agents:
            for path, text in saved[agent.name].items():
                in_host(agent, ["sh", "-c", 'cat > "$1"', "restore", path], input=text)
            in_host(agent, ["rm", "-rf", "/etc/pki/CA", "/etc/pki/libvirt", "/etc/pki/qemu"])
            restart_libvirtd_as_the_lab_does(agent, lab_state_dir)
        for agent in tls_agents:
            assert in_host(agent, ["ss", "-Htln", f"sport = :{TLS_PORT}"]).stdout == ""


def test_the_role_gives_libvirtd_and_qemu_separate_certificates(tls_hosts):
    for agent in tls_hosts:
        listing = in_host(agent, ["stat", "-c", "%n %a %U:%G", "/etc/pki/CA/cacert.pem",
                                  "/etc/pki/CA/cacrl.pem", "/etc/pki/qemu/ca-crl.pem",
                                  "/etc/pki/libvirt/servercert.pem",
                                  "/etc/pki/libvirt/clientcert.pem",
                                  "/etc/pki/libvirt/private/serverkey.pem",
                                  "/etc/pki/libvirt/private/clientkey.pem",
                                  "/etc/pki/qemu/server-key.pem",
                                  "/etc/pki/qemu/client-key.pem"]).stdout.splitlines()
        modes = dict(line.split(" ", 1) for line in listing)
        assert modes["/etc/pki/libvirt/private/serverkey.pem"] == "600 root:root"
        assert modes["/etc/pki/libvirt/private/clientkey.pem"] == "600 root:root"
        assert modes["/etc/pki/qemu/server-key.pem"] == "640 root:libvirt-qemu"
        assert modes["/etc/pki/qemu/client-key.pem"] == "640 root:libvirt-qemu"
        # What QEMU's group can read is not libvirtd's key.
        libvirt_key, qemu_key = (in_host(agent, ["openssl", "pkey", "-pubout", "-in", path]).stdout
                                 for path in ("/etc/pki/libvirt/private/serverkey.pem",
                                              "/etc/pki/qemu/server-key.pem"))
        assert libvirt_key != qemu_key
        for path, unit in (("/etc/pki/libvirt/servercert.pem", "libvirt"),
                           ("/etc/pki/qemu/server-cert.pem", "migration")):
            names = in_host(agent, ["openssl", "x509", "-in", path, "-noout", "-subject", "-ext",
                                    "subjectAltName,extendedKeyUsage"]).stdout
            assert f"subject=O = kestrel, OU = {unit}, CN = {agent.name}" in names
            assert f"DNS:{agent.name}" in names and f"IP Address:{agent.address}" in names
            assert "TLS Web Server Authentication" in names
            assert "TLS Web Client Authentication" in names
        conf = in_host(agent, ["cat", "/etc/libvirt/libvirtd.conf"]).stdout
        assert 'tls_allowed_dn_list = ["O=kestrel,OU=libvirt,CN=*"]' in conf
        assert "migrate_tls_x509_verify = 1" in in_host(agent, ["cat", "/etc/libvirt/qemu.conf"]).stdout
        assert in_host(agent, ["ss", "-Htln", f"sport = :{TLS_PORT}"]).stdout.strip()


# -- the engine CA is the only way in -------------------------------------------------------


def client_pki(tmp_path: Path, ca_dir: str, name: str, profile: str = "libvirt") -> str:
    """A pkipath directory for virsh: an RSA client key and a certificate of ``profile``
    signed by the CA in ``ca_dir``, with that CA as the one the client trusts."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (CertificateSigningRequestBuilder()
           .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    directory = Path(tempfile.mkdtemp(dir=tmp_path, prefix=f"{name}-{profile}-"))
    (directory / "clientcert.pem").write_bytes(pki.sign_csr(ca_dir, csr, name, [], profile))
    (directory / "clientkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (directory / "cacert.pem").write_bytes(Path(ca_dir, "ca.pem").read_bytes())
    return str(directory)


def virsh_over_tls(target, pkipath: str) -> subprocess.CompletedProcess:
    """``virsh hostname`` against ``target``'s libvirtd with the client certificate in
    ``pkipath``. no_verify=1: the client skips checking the server, so only the
    server's check of the client certificate decides."""
    uri = f"qemu+tls://{target.address}/system?pkipath={pkipath}&no_verify=1"
    return subprocess.run(["virsh", "-c", uri, "hostname"], capture_output=True,
                          text=True, timeout=30, check=False)


def assert_refused(target, result: subprocess.CompletedProcess, why: str) -> None:
    assert result.returncode != 0 and not result.stdout.strip(), result
    log = in_host(target, ["tail", "-n", "50", "/var/log/libvirt/libvirtd.log"]).stdout
    assert why in (result.stderr + log).lower(), (result.stderr, log)


def test_libvirtd_accepts_only_libvirt_client_certificates_from_the_engine_ca(
        tls_hosts, engine_pki_dir, tmp_path):
    rogue_ca = tmp_path / "rogue-ca"
    pki.init_ca(str(rogue_ca), "not the engine CA")
    target = tls_hosts[1]

    trusted = virsh_over_tls(target, client_pki(tmp_path, engine_pki_dir, "h7"))
    assert trusted.returncode == 0 and trusted.stdout.strip(), (trusted.stderr, in_host(
        target, ["tail", "-n", "30", "/var/log/libvirt/libvirtd.log"]).stdout)
    assert_refused(target, virsh_over_tls(target, client_pki(tmp_path, str(rogue_ca), "h7")),
                   "certificate")
    # QEMU's migration certificate (its key is readable by QEMU's group): not in the
    # DN list. A host's agent certificate: no clientAuth at all.
    assert_refused(target, virsh_over_tls(target, client_pki(tmp_path, engine_pki_dir, "h7",
                                                             "migration")),
                   "distinguished name")
    assert_refused(target, virsh_over_tls(target, client_pki(tmp_path, engine_pki_dir, "h7",
                                                             "agent")),
                   "certificate")


def test_libvirtd_refuses_a_removed_hosts_certificate_once_the_engine_revokes_it(
        engine, agents, tls_hosts, engine_pki_dir, tmp_path):
    """h8 was enrolled (libvirt profile) and is removed: the engine revokes its
    certificates and pushes the CRL through the agents to libvirtd."""
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    target = tls_hosts[1]
    removed = client_pki(tmp_path, engine_pki_dir, "h8")
    assert virsh_over_tls(target, removed).returncode == 0

    assert engine.hosts.remove("h8").changed

    last = engine.events.info(entity_type="host", entity_name="h8")[-1]["message"]
    assert "revocation list sent to h1, h2, h3" in last, last
    for agent in tls_hosts:
        crl = Path(engine_pki_dir, "crl.pem").read_text()
        assert in_host(agent, ["cat", "/etc/pki/CA/cacrl.pem"]).stdout == crl
        assert in_host(agent, ["cat", "/etc/pki/qemu/ca-crl.pem"]).stdout == crl
    assert_refused(target, virsh_over_tls(target, removed), "revoked")
    # Another host's certificate still gets in: libvirtd reloaded, it did not stop.
    assert virsh_over_tls(target, client_pki(tmp_path, engine_pki_dir, "h7")).returncode == 0


# -- engine: the migration itself ------------------------------------------------------------


@pytest.fixture
def encrypted_cluster(engine, agents, tls_hosts, lab_guest):
    """A new cluster, which encrypts its migrations without being asked to."""
    assert engine.clusters.ensure("lab", virt_type="qemu").entity["migration_encrypted"] is True
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    return "lab"


@pytest.fixture
def guest_on_h1(engine, encrypted_cluster, agents):
    """A running tiny guest started on h1, then free to go to h2 or h3."""
    vm = engine.vms.ensure(tiny_guest("tls-guest", placement={"hosts": ["h1"]}),
                           state="running").entity
    try:
        wait_for_console(engine, "tls-guest", "kestrel-guest: nics")
        engine.vms.ensure({"name": "tls-guest", "placement": {"hosts": ["h1", "h2", "h3"]}})
        yield vm
    finally:
        engine.vms.ensure({"name": "tls-guest"}, state="absent")
        assert copies(agents, vm["id"]) == {}, "a domain stayed behind"


def watch_migration(agent, destination: str, vm_id: str, stop: threading.Event,
                    seen: dict) -> None:
    """From the source host: the ports its connections to the destination use, and
    QEMU's migration TLS credentials while the job runs."""
    while not stop.is_set():
        try:
            sockets = in_host(agent, ["ss", "-Htn", "state", "established", "dst",
                                      destination], check=False, timeout=10).stdout
            seen["ports"].update(int(line.split()[-1].rsplit(":", 1)[1])
                                 for line in sockets.splitlines() if line.strip())
            params = in_host(agent, ["virsh", "-c", "qemu:///system", "qemu-monitor-command",
                                     vm_id, '{"execute": "query-migrate-parameters"}'],
                             check=False, timeout=10)
            if params.returncode == 0:
                seen["tls_creds"].add(json.loads(params.stdout)["return"].get("tls-creds", ""))
            else:
                seen["errors"].append(params.stderr.strip())
        except (subprocess.TimeoutExpired, ValueError, KeyError) as exc:
            seen["errors"].append(repr(exc))
        time.sleep(0.2)


def test_an_encrypted_migration_runs_over_tls_and_the_guest_runs_once_on_h2(
        engine, agents, guest_on_h1):
    vm_id = guest_on_h1["id"]
    assert guest_on_h1["host"] == "h1"
    source = next(a for a in agents if a.name == "h1")
    destination = next(a for a in agents if a.name == "h2")
    seen = {"ports": set(), "tls_creds": set(), "errors": []}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_migration, args=(
        source, destination.address, vm_id, stop, seen))
    watcher.start()
    try:
        outcome = engine.migrations.migrate("tls-guest", host="h2", bandwidth_mbps=SLOW_MBPS)
    finally:
        stop.set()
        watcher.join()
    assert outcome.changed and outcome.entity["encrypted"] is True
    assert outcome.entity["status"] == "succeeded"
    assert copies(agents, vm_id) == {"h2": "running"}
    assert engine.vms.info("tls-guest")[0]["host"] == "h2"
    # The daemons talked over TLS (16514), never plain TCP (16509), and QEMU's own
    # stream had TLS credentials while it ran.
    assert TLS_PORT in seen["ports"] and 16509 not in seen["ports"], seen
    assert any(creds for creds in seen["tls_creds"]), seen
    assert destination.client().vm_status(vm_id)["status"] == "Up"
    assert_guest_runs(destination, vm_id)


def test_an_encrypted_migration_to_a_host_without_tls_fails_and_the_guest_stays(
        engine, agents, guest_on_h1):
    vm_id = guest_on_h1["id"]
    with pytest.raises(MigrationFailed) as info:
        engine.migrations.migrate("tls-guest", host="h3")
    assert "16514" in info.value.message and "encrypts migrations" in info.value.message
    assert copies(agents, vm_id) == {"h1": "running"}
    vm = engine.vms.info("tls-guest")[0]
    assert (vm["status"], vm["host"]) == ("Up", "h1")
