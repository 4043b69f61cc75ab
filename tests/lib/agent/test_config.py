"""The agent's INI config: defaults, overrides, and errors that name section and key."""

from __future__ import annotations

import pytest

from engine_lib.agent import config
from engine_lib.protocol.errors import InvalidSpec

FULL = """
[agent]
address = 10.77.0.1
port = 54321
libvirt_uri = qemu:///system
name = h1

[pki]
ca = /etc/kestrel/pki/ca.pem
cert = /etc/kestrel/pki/agent.pem
key = /etc/kestrel/pki/agent.key

[paths]
channels = /var/lib/kestrel/channels
payload = /var/lib/kestrel/payload
console = /var/log/kestrel/console
nvram = /var/lib/kestrel/nvram

[storage]
file_domain_roots = /srv/kestrel-lab/shared /srv/other

[storage_domains]
data = /srv/kestrel-lab/shared/data
Images = /srv/kestrel-lab/shared/images/
"""


def test_full_config_is_read_as_written(tmp_path):
    path = tmp_path / "agent.conf"
    path.write_text(FULL)
    cfg = config.load(str(path))
    assert (cfg.name, cfg.address, cfg.port, cfg.libvirt_uri) == \
        ("h1", "10.77.0.1", 54321, "qemu:///system")
    assert cfg.cert == "/etc/kestrel/pki/agent.pem"
    assert cfg.paths["console"] == "/var/log/kestrel/console"
    # Storage domain names keep their case; trailing slashes do not matter.
    assert cfg.storage_domains == {"data": "/srv/kestrel-lab/shared/data",
                                   "Images": "/srv/kestrel-lab/shared/images"}
    assert cfg.file_domain_roots == ("/srv/kestrel-lab/shared", "/srv/other")
    assert cfg.resolve("/kestrel-placeholder/storage/data/img/vol") == \
        "/srv/kestrel-lab/shared/data/img/vol"
    assert cfg.resolve("/kestrel-placeholder/console/x.log") == "/var/log/kestrel/console/x.log"


def test_empty_config_means_vdsm_like_defaults():
    cfg = config.loads("")
    assert cfg.port == 54321 and cfg.address == "0.0.0.0"
    assert cfg.ca == "/etc/kestrel/pki/ca.pem"
    assert cfg.paths["nvram"] == "/var/lib/kestrel/nvram"
    assert cfg.storage_domains == {}
    assert cfg.file_domain_roots == ("/var/lib/kestrel/storage",)
    assert cfg.name  # the host name
    assert cfg.allow_private_urls is False  # image imports never reach the host's own addresses
    assert cfg.cpu_accounting == "node"  # a real host owns its machine's CPUs


def test_cpu_accounting_is_node_or_cgroup():
    assert config.loads("[statistics]\ncpu_accounting = cgroup\n").cpu_accounting == "cgroup"
    with pytest.raises(InvalidSpec) as err:
        config.loads("[statistics]\ncpu_accounting = cgroups\n", "agent.conf")
    assert err.value.field == "agent.conf [statistics] cpu_accounting"
    assert "'cgroups' is not one of node, cgroup" in err.value.message


def test_private_image_urls_are_allowed_only_when_asked():
    assert config.loads("[images]\nallow_private_urls = true\n").allow_private_urls is True
    with pytest.raises(InvalidSpec) as err:
        config.loads("[images]\nallow_private_urls = yes please\n", "agent.conf")
    assert err.value.field == "agent.conf [images] allow_private_urls"


@pytest.mark.parametrize("text, field, reason", [
    ("[agent]\nport = http\n", "[agent] port", "'http' is not a TCP port number"),
    ("[agent]\nport = 70000\n", "[agent] port", "not a TCP port number"),
    ("[agent]\nprot = 1\n", "[agent] prot", "unknown key"),
    ("[pki]\nca = ca.pem\n", "[pki] ca", "'ca.pem' is not an absolute path"),
    ("[paths]\nconsole = log\n", "[paths] console", "not an absolute path"),
    ("[storage_domains]\ndata = relative/dir\n", "[storage_domains] data",
     "must be an absolute directory path"),
    ("[storage]\ndata = /x\n", "[storage] data", "unknown key"),
    ("[storage]\nfile_domain_roots = /\n", "[storage] file_domain_roots", "other than /"),
    ("[storage_domains]\ndata = /etc/cron.d\n", "[storage_domains] data",
     "not under a directory the administrator allowed"),
    ("[storage_domains]\ndata = /var/lib/kestrel/storage-x\n", "[storage_domains] data",
     "not under a directory the administrator allowed"),
    ("[storage]\nfile_domain_roots = /srv\n[storage_domains]\ndata = /srv/../etc\n",
     "[storage_domains] data", "'..'"),
    ("[volumes]\ndata = /x\n", "[volumes]", "unknown section"),
])
def test_errors_name_file_section_and_key(text, field, reason):
    with pytest.raises(InvalidSpec) as err:
        config.loads(text, "agent.conf")
    assert err.value.field == f"agent.conf {field}"
    assert reason in err.value.reason


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(InvalidSpec, match="cannot read the agent config"):
        config.load(str(tmp_path / "missing.conf"))
    bad = tmp_path / "bad.conf"
    bad.write_text("port = 1\n")
    with pytest.raises(InvalidSpec, match="not a valid INI file"):
        config.load(str(bad))


def test_a_domain_linked_out_of_the_allowed_roots_is_refused(tmp_path):
    (tmp_path / "roots").mkdir()
    (tmp_path / "roots" / "data").symlink_to("/etc")
    with pytest.raises(InvalidSpec, match="/etc is not under a directory the administrator"):
        config.loads(f"[storage]\nfile_domain_roots = {tmp_path}/roots\n"
                     f"[storage_domains]\ndata = {tmp_path}/roots/data\n")
