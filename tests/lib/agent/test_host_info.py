"""What GET /host reports about the host beyond libvirt: sshd's public host keys."""

from engine_lib.agent.host_info import ssh_host_keys


def test_the_agent_reports_sshds_public_host_keys_without_comments(tmp_path):
    (tmp_path / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAAC3Nza root@h1\n")
    (tmp_path / "ssh_host_rsa_key.pub").write_text("ssh-rsa AAAAB3Nza\n")
    (tmp_path / "ssh_host_rsa_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (tmp_path / "ssh_host_ecdsa_key.pub").write_text("")  # unusable: skipped
    assert ssh_host_keys(str(tmp_path)) == ["ssh-ed25519 AAAAC3Nza", "ssh-rsa AAAAB3Nza"]
    assert ssh_host_keys(str(tmp_path / "absent")) == []
