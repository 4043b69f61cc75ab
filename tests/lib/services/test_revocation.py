"""Removing a host revokes its certificates and hands the CRL to the hosts that remain
(services.revocation), with FakeAgents. Real agents, libvirtd and QEMU:
tests/system/test_certificate_profiles.py."""

from __future__ import annotations

import subprocess

import pytest

from engine_lib import pki
from engine_lib.protocol.errors import AgentUnreachable


@pytest.fixture
def fleet(engine, cluster, agents):
    pki.init_ca(str(engine.config.pki_dir))
    for number in (1, 2, 3):
        engine.hosts.ensure(f"h{number}", address=f"10.0.0.{number}", cluster=cluster)
    return {f"h{n}": agents[f"10.0.0.{n}"] for n in (1, 2, 3)}


def _revoked(pki_dir, cert_pem: bytes, tmp_path) -> bool:
    (tmp_path / "leaf.pem").write_bytes(cert_pem)
    check = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", f"{pki_dir}/ca.pem",
                            "-CRLfile", f"{pki_dir}/crl.pem", str(tmp_path / "leaf.pem")],
                           capture_output=True, text=True)
    return check.returncode != 0 and "revoked" in check.stdout + check.stderr


def messages(engine, name):
    return [e["message"] for e in engine.events.info(entity_type="host", entity_name=name)]


def test_removing_a_host_revokes_its_certificates_and_tells_the_others(engine, fleet, tmp_path):
    pki_dir = str(engine.config.pki_dir)
    h3_certs = [pki.issue(pki_dir, "h3", ["10.0.0.3"], p)[1]
                for p in ("agent", "libvirt", "migration")]
    h1_cert = pki.issue(pki_dir, "h1", ["10.0.0.1"])[1]
    fleet["h2"].reachable = False

    assert engine.hosts.remove("h3").changed

    assert all(_revoked(pki_dir, cert, tmp_path) for cert in h3_certs)
    assert not _revoked(pki_dir, h1_cert, tmp_path)
    crl = (engine.config.pki_dir / "crl.pem").read_text()
    assert fleet["h1"].crls == [crl]
    assert getattr(fleet["h2"], "crls", []) == [] and getattr(fleet["h3"], "crls", []) == []
    story = messages(engine, "h3")
    assert story[-2] == "host removed"
    assert "revocation list sent to h1" in story[-1]
    assert "not reached (they get it when deployed): h2: agent 10.0.0.2 unreachable" in story[-1]


def test_removing_again_revokes_what_an_interrupted_removal_left(engine, fleet, monkeypatch):
    from engine_lib.services import revocation

    def crash(*_args):
        raise AgentUnreachable("the engine stopped here")

    monkeypatch.setattr(revocation.pki, "revoke", crash)
    pki.issue(str(engine.config.pki_dir), "h3", [])
    with pytest.raises(AgentUnreachable):
        engine.hosts.remove("h3")
    assert engine.hosts.info("h3") == []
    monkeypatch.undo()

    again = engine.hosts.remove("h3")
    assert again.changed and fleet["h1"].crls
    assert engine.hosts.remove("h3").changed is False  # nothing left to revoke


def test_check_mode_removal_revokes_nothing(engine, fleet):
    pki.issue(str(engine.config.pki_dir), "h3", [])
    crl = (engine.config.pki_dir / "crl.pem").read_bytes()
    assert engine.hosts.remove("h3", check_mode=True).changed
    assert (engine.config.pki_dir / "crl.pem").read_bytes() == crl
    assert engine.hosts.info("h3")
