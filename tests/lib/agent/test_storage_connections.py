"""NFS storage domains connected on hosts (issue 9): the agent mounts, the engine asks.

This kernel has no NFS, so no real NFS mount runs here: ``mount`` and ``umount``
are stand-in executables put first on PATH that record their argv and edit a
mountinfo file the agent reads instead of /proc/self/mountinfo. Everything
else is real: the agent's HTTP route over TLS with the engine's AgentClient,
and the engine flow on SQLite and PostgreSQL (FakeAgent in conftest.py).
"""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from engine_lib import pki
from engine_lib.agent.api import Api
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.server import AgentServer, server_context
from engine_lib.agent.storage_connections import MountFailed, StorageConnections, mounts
from engine_lib.agent.volumes import VolumeLocation
from engine_lib.broker import AgentClient
from engine_lib.loop.monitoring import Intervals, Monitor
from engine_lib.protocol import placeholders
from engine_lib.protocol.errors import AgentError, Conflict, InvalidSpec

EXPORT = "nas.example:/exports/kestrel"

# Records argv (one JSON list per line); on success adds the mountinfo line (with the
# per-mount flags the kernel would show) or, for a remount, sets those flags.
_MOUNT = """#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["KESTREL_TEST_RECORD"], "a") as rec:
    rec.write(json.dumps(["mount"] + args) + "\\n")
if os.environ.get("KESTREL_TEST_MOUNT_FAIL"):
    sys.stderr.write(os.environ["KESTREL_TEST_MOUNT_FAIL"] + "\\n")
    sys.exit(32)
options = args[args.index("-o") + 1].split(",") if "-o" in args else []
flags = ",".join(["rw"] + [o for o in ("nosuid", "nodev", "noexec") if o in options])
path = os.environ["KESTREL_TEST_MOUNTINFO"]
target = args[-1].replace(" ", chr(92) + "040")
if "remount" in options:
    lines = [l.split() for l in open(path)]
    open(path, "w").writelines(" ".join(f[:5] + [flags] + f[6:]) + "\\n" if f[4] == target
                               else " ".join(f) + "\\n" for f in lines)
    sys.exit(0)
with open(path, "a") as info:
    info.write(f"90 25 0:52 / {target} {flags},relatime shared:40 "
               f"- nfs4 {args[-2]} rw,vers=4.2\\n")
"""
_UMOUNT = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["KESTREL_TEST_RECORD"], "a") as rec:
    rec.write(json.dumps(["umount"] + sys.argv[1:]) + "\\n")
path = os.environ["KESTREL_TEST_MOUNTINFO"]
target = sys.argv[-1]
lines = [l for l in open(path) if l.split()[4] != target]
open(path, "w").writelines(lines)
"""


class FakeMounts:
    def __init__(self, tmp_path):
        self.mountinfo = tmp_path / "mountinfo"
        self.record = tmp_path / "calls.jsonl"
        self.mountinfo.write_text("22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n")

    def calls(self) -> list[list[str]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
def fake_mount(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("mount", _MOUNT), ("umount", _UMOUNT)):
        exe = bin_dir / name
        exe.write_text(script)
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    fake = FakeMounts(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KESTREL_TEST_RECORD", str(fake.record))
    monkeypatch.setenv("KESTREL_TEST_MOUNTINFO", str(fake.mountinfo))
    return fake


def _where(fake: FakeMounts) -> dict:
    """Where the stand-ins keep mounts, and the mount root (tmp/mnt)."""
    return {"mountinfo": str(fake.mountinfo), "mount_root": str(fake.mountinfo.parent / "mnt")}


def _request(tmp_path, **overrides) -> dict:
    return {"name": "nfs1", "type": "nfs", "export": EXPORT, "options": "vers=4.2,soft",
            "path": str(tmp_path / "mnt" / "nfs1"), **overrides}


# -- the agent's logic ---------------------------------------------------------------

def test_connect_mounts_with_this_argv_and_the_domain_resolves(tmp_path, fake_mount):
    domains: dict[str, str] = {}
    storage = StorageConnections(domains, **_where(fake_mount))
    path = str(tmp_path / "mnt" / "nfs1")

    answer = storage.connect(_request(tmp_path))

    assert answer == {"name": "nfs1", "path": path, "mounted": True, "changed": True}
    assert fake_mount.calls() == [["mount", "-t", "nfs", "-o", "vers=4.2,soft,nosuid,nodev,noexec",
                                   "--", EXPORT, path]]
    assert os.path.isdir(path)
    assert domains == {"nfs1": path}
    # What a VM disk on the domain resolves to on this host.
    assert VolumeLocation("nfs1", "img", "vol").path(domains) == f"{path}/img/vol"
    assert placeholders.resolve(placeholders.storage("nfs1", "img/vol"), {}, domains) == \
        f"{path}/img/vol"


def test_connect_again_changes_nothing_and_does_not_call_mount(tmp_path, fake_mount):
    storage = StorageConnections({}, **_where(fake_mount))
    storage.connect(_request(tmp_path))
    assert storage.connect(_request(tmp_path))["changed"] is False
    assert len(fake_mount.calls()) == 1


def test_an_export_mounted_before_the_agent_started_is_taken_as_it_is(tmp_path, fake_mount):
    path = tmp_path / "mnt" / "nfs1"
    with open(fake_mount.mountinfo, "a") as info:
        info.write(f"91 25 0:53 / {path} rw,nosuid,nodev,noexec shared:41 - nfs4 {EXPORT}/ "
                   "rw,vers=4.2\n")
    domains: dict[str, str] = {}
    answer = StorageConnections(domains, **_where(fake_mount)).connect(
        _request(tmp_path, options=""))
    assert answer["changed"] is False and domains == {"nfs1": str(path)}
    assert fake_mount.calls() == []


def test_an_export_mounted_without_nosuid_nodev_is_remounted_before_use(tmp_path, fake_mount):
    path = tmp_path / "mnt" / "nfs1"
    with open(fake_mount.mountinfo, "a") as info:
        info.write(f"91 25 0:53 / {path} rw,nodev,relatime shared:41 - nfs4 {EXPORT} rw\n")
    domains: dict[str, str] = {}
    storage = StorageConnections(domains, **_where(fake_mount))
    assert storage.connect(_request(tmp_path))["changed"] is True
    assert fake_mount.calls() == [["mount", "-o", "remount,nosuid,nodev,noexec", "--",
                                   str(path)]]
    assert {"nosuid", "nodev", "noexec"} <= mounts(str(fake_mount.mountinfo))[str(path)].options
    assert domains == {"nfs1": str(path)}
    assert storage.connect(_request(tmp_path))["changed"] is False


def test_without_options_only_ours(tmp_path, fake_mount):
    StorageConnections({}, **_where(fake_mount)).connect(
        _request(tmp_path, options=""))
    assert fake_mount.calls()[0][:5] == ["mount", "-t", "nfs", "-o", "nosuid,nodev,noexec"]


@pytest.mark.parametrize("path", ["/etc/kestrel/hooks", "/etc/cron.d", "{root}/nfs1/deeper",
                                  "{root}", "{root}/.."])
def test_a_mount_point_outside_the_mount_root_is_refused(tmp_path, fake_mount, path):
    domains: dict[str, str] = {}
    with pytest.raises(InvalidSpec, match="^path: ") as err:
        StorageConnections(domains, **_where(fake_mount)).connect(
            _request(tmp_path, path=path.format(root=tmp_path / "mnt")))
    assert err.value.field == "path"
    assert domains == {} and fake_mount.calls() == []


def test_a_linked_mount_point_is_never_mounted_over(tmp_path, fake_mount):
    (tmp_path / "mnt").mkdir()
    (tmp_path / "target").mkdir()
    (tmp_path / "mnt" / "nfs1").symlink_to(tmp_path / "target")
    domains: dict[str, str] = {}
    with pytest.raises(InvalidSpec, match="is not a directory"):
        StorageConnections(domains, **_where(fake_mount)).connect(_request(tmp_path))
    assert domains == {} and fake_mount.calls() == []


def test_something_else_mounted_there_is_a_conflict(tmp_path, fake_mount):
    path = tmp_path / "mnt" / "nfs1"
    with open(fake_mount.mountinfo, "a") as info:
        info.write(f"91 25 0:53 / {path} rw shared:41 - nfs4 other:/export rw\n")
    domains: dict[str, str] = {}
    with pytest.raises(Conflict, match="other:/export"):
        StorageConnections(domains, **_where(fake_mount)).connect(
            _request(tmp_path))
    assert domains == {} and fake_mount.calls() == []


@pytest.mark.parametrize("field, value", [
    ("options", "vers=4.2 soft"),
    ("options", "vers=4.2;reboot"),
    ("options", "$(touch /tmp/x)"),
    ("options", "soft,,hard"),
    ("options", "soft\nhard"),
    ("export", "nas:exports"),
    ("export", "nas:/x y"),
    ("path", "relative/dir"),
    ("path", "/srv/../etc"),
    ("options", "vers=4.2,suid"),
    ("options", "dev"),
    ("options", "exec,soft"),
    ("options", "defaults"),
    ("options", "remount"),
    ("options", "bind"),
    ("path", "/"),
    ("name", "a/b"),
    ("type", "glusterfs"),
])
def test_bad_requests_are_refused_naming_the_field_and_change_nothing(
        tmp_path, fake_mount, field, value):
    domains: dict[str, str] = {}
    with pytest.raises(InvalidSpec) as err:
        StorageConnections(domains, **_where(fake_mount)).connect(
            _request(tmp_path, **{field: value}))
    assert err.value.field == field
    assert domains == {} and fake_mount.calls() == []
    assert not (tmp_path / "mnt").exists()


def test_a_failing_mount_says_why_and_registers_nothing(tmp_path, fake_mount, monkeypatch):
    monkeypatch.setenv("KESTREL_TEST_MOUNT_FAIL", "mount.nfs: access denied by server")
    domains: dict[str, str] = {}
    storage = StorageConnections(domains, **_where(fake_mount))
    with pytest.raises(MountFailed, match="access denied by server") as err:
        storage.connect(_request(tmp_path))
    assert err.value.details["returncode"] == 32
    assert domains == {}
    assert storage.failures() == [{"name": "nfs1", "path": str(tmp_path / "mnt" / "nfs1"),
                                   "available": False,
                                   "error": err.value.message}]
    monkeypatch.delenv("KESTREL_TEST_MOUNT_FAIL")
    storage.connect(_request(tmp_path))
    assert storage.failures() == [] and "nfs1" in domains


def test_disconnect_is_refused_while_a_vm_uses_a_volume_then_unmounts(tmp_path, fake_mount):
    domains: dict[str, str] = {}
    storage = StorageConnections(domains, **_where(fake_mount))
    path = storage.connect(_request(tmp_path))["path"]
    disk = f"{path}/img-1/vol-1"

    with pytest.raises(Conflict, match="vol-1"):
        storage.disconnect("nfs1", lambda: {disk, "/var/lib/other/disk.qcow2"})
    assert domains == {"nfs1": path} and path in mounts(str(fake_mount.mountinfo))
    assert [c[0] for c in fake_mount.calls()] == ["mount"]

    assert storage.disconnect("nfs1", lambda: {"/var/lib/other/disk.qcow2"}) == \
        {"name": "nfs1", "path": path, "mounted": False, "changed": True}
    assert fake_mount.calls()[-1] == ["umount", "--", path]
    assert domains == {} and path not in mounts(str(fake_mount.mountinfo))
    assert storage.disconnect("nfs1", set)["changed"] is False


def test_a_domain_from_the_agent_config_is_never_unmounted_on_request(tmp_path, fake_mount):
    domains = {"data": "/srv/data"}
    with pytest.raises(Conflict, match="agent's config"):
        StorageConnections(domains, **_where(fake_mount)).disconnect("data", set)
    assert domains == {"data": "/srv/data"} and fake_mount.calls() == []


def test_a_name_configured_at_another_path_is_a_conflict(tmp_path, fake_mount):
    domains = {"nfs1": "/srv/elsewhere"}
    with pytest.raises(Conflict, match="/srv/elsewhere"):
        StorageConnections(domains, **_where(fake_mount)).connect(
            _request(tmp_path))
    assert fake_mount.calls() == []


def test_mountinfo_mount_points_are_unescaped(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - nfs "
                    "srv:/a rw\n40 35 0:5 / /srv/x rw shared:2 opt:1 - nfs4 srv:/b rw\n")
    assert mounts(str(info)) == {
        "/mnt/with space": ("nfs", "srv:/a", frozenset({"rw", "noatime"})),
        "/srv/x": ("nfs4", "srv:/b", frozenset({"rw"}))}


# -- the HTTP route over real TLS ----------------------------------------------------------

@pytest.fixture
def tls_agent(tmp_path, fake_mount):
    pki_dir = tmp_path / "pki"
    pki.init_ca(str(pki_dir))
    key, cert = pki.issue(str(pki_dir), "agent", ["127.0.0.1"])
    (tmp_path / "agent.key").write_bytes(key)
    (tmp_path / "agent.pem").write_bytes(cert)
    config = AgentConfig(name="agent", address="127.0.0.1", port=0,
                         libvirt_uri="test:///default", ca=str(pki_dir / "ca.pem"),
                         cert=str(tmp_path / "agent.pem"), key=str(tmp_path / "agent.key"),
                         source="test")
    api = Api(config)
    api.storage = StorageConnections(config.storage_domains, **_where(fake_mount))
    server = AgentServer(config, server_context(config), api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield AgentClient("127.0.0.1", server.server_address[1], str(pki_dir)), config
    server.shutdown()
    server.server_close()
    api.close()


def test_connect_and_disconnect_over_tls(tmp_path, tls_agent, fake_mount):
    client, config = tls_agent
    path = str(tmp_path / "mnt" / "nfs1")
    assert client.connect_storage("nfs1", EXPORT, path, "vers=4.2") == \
        {"name": "nfs1", "path": path, "mounted": True, "changed": True}
    assert client.connect_storage("nfs1", EXPORT, path, "vers=4.2")["changed"] is False
    assert config.storage_domains == {"nfs1": path}
    assert fake_mount.calls() == [["mount", "-t", "nfs", "-o", "vers=4.2,nosuid,nodev,noexec",
                                   "--", EXPORT, path]]

    # test:///default's domain has no disk on the domain: nothing holds it.
    assert client.disconnect_storage("nfs1")["changed"] is True
    assert fake_mount.calls()[-1] == ["umount", "--", path]
    assert config.storage_domains == {}


def test_bad_options_over_tls_are_invalid_spec_naming_the_field(tmp_path, tls_agent, fake_mount):
    client, config = tls_agent
    with pytest.raises(InvalidSpec) as err:
        client.connect_storage("nfs1", EXPORT, str(tmp_path / "m"), "vers=4 ;rm")
    assert err.value.field == "options"
    assert fake_mount.calls() == [] and config.storage_domains == {}


def test_a_failing_mount_over_tls_carries_mounts_stderr(tmp_path, tls_agent, fake_mount,
                                                       monkeypatch):
    monkeypatch.setenv("KESTREL_TEST_MOUNT_FAIL", "mount.nfs: Connection timed out")
    client, config = tls_agent
    with pytest.raises(AgentError, match="Connection timed out") as err:
        client.connect_storage("nfs1", EXPORT, str(tmp_path / "mnt" / "nfs1"))
    assert err.value.details["code"] == "MountFailed"
    assert config.storage_domains == {}


# -- the engine: connect on Up, attach and detach -------------------------------------------

@pytest.fixture
def nfs_cluster(engine, cluster):
    engine.clusters.ensure("c2", virt_type="qemu")
    engine.storage_domains.ensure("nfs1", type="nfs", export=EXPORT, path="/var/lib/kestrel/mnt/nfs1",
                                  clusters=[cluster])
    engine.storage_domains.ensure("nfs-other", type="nfs", export="nas:/other",
                                  path="/var/lib/kestrel/mnt/other", clusters=["c2"])
    engine.storage_domains.ensure("local", path="/srv/local", clusters=[cluster])
    return cluster


def _connects(agent) -> list[tuple]:
    return [call for call in getattr(agent, "storage_calls", []) if call[0] == "connect"]


def test_a_new_host_connects_only_its_clusters_nfs_domains(engine, nfs_cluster, agents):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=nfs_cluster)
    assert agents["10.0.0.1"].storage_calls == [("connect", "nfs1", EXPORT, "/var/lib/kestrel/mnt/nfs1")]
    assert engine.storage_domains.info("nfs1")[0]["hosts"]["h1"] == \
        {"available": True, "path": "/var/lib/kestrel/mnt/nfs1"}
    assert any("storage domain 'nfs1' connected" in e["message"]
               for e in engine.events.info(entity_name="h1"))


def test_a_host_coming_up_again_connects_its_domains(engine, nfs_cluster, agents):
    monitor = Monitor(engine, Intervals())
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=nfs_cluster)
    agent = agents["10.0.0.1"]
    monitor.cycle(poll_vms=False)
    assert len(_connects(agent)) == 1  # Up already: a heartbeat connects nothing
    agent.reachable = False
    monitor.cycle(poll_vms=False)
    agent.reachable = True
    monitor.cycle(poll_vms=False)
    assert engine.hosts.info("h1")[0]["status"] == "Up"
    assert _connects(agent)[1:] == [("connect", "nfs1", EXPORT, "/var/lib/kestrel/mnt/nfs1")]


def test_a_domain_that_cannot_be_mounted_is_audited_and_unavailable(engine, nfs_cluster, agents):
    engine.storage_domains.ensure("nfs2", type="nfs", export="nas:/two", path="/var/lib/kestrel/mnt/two",
                                  clusters=[nfs_cluster])
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=nfs_cluster)
    agent = agents["10.0.0.1"]
    agent.mount_errors = {"nfs1": "cannot mount: mount.nfs: access denied by server"}
    monitor = Monitor(engine, Intervals())
    agent.reachable = False
    monitor.cycle(poll_vms=False)
    agent.reachable = True
    monitor.cycle(poll_vms=False)  # Up again: connects, nfs1 fails, the loop goes on

    assert [c[1] for c in _connects(agent)] == ["nfs1", "nfs2", "nfs1", "nfs2"]
    assert engine.hosts.info("h1")[0]["status"] == "Up"
    assert engine.storage_domains.info("nfs1")[0]["hosts"]["h1"] == {
        "available": False, "path": "/var/lib/kestrel/mnt/nfs1",
        "error": "cannot mount: mount.nfs: access denied by server"}
    assert engine.storage_domains.info("nfs2")[0]["hosts"]["h1"]["available"] is True
    warnings = [e["message"] for e in engine.events.info(entity_name="h1")
                if e["severity"] == "warning" and "storage" in e["message"]]
    assert warnings == ["storage domain 'nfs1' is unavailable on this host: cannot mount: "
                        "mount.nfs: access denied by server"]


def test_an_agent_that_forgot_its_connections_is_reconnected_by_the_heartbeat(
        engine, nfs_cluster, agents):
    monitor = Monitor(engine, Intervals())
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=nfs_cluster)
    agent = agents["10.0.0.1"]
    monitor.cycle(poll_vms=False)
    assert len(_connects(agent)) == 1
    agent.connected_storage.clear()  # the agent restarted between two heartbeats
    monitor.cycle(poll_vms=False)
    assert len(_connects(agent)) == 2 and agent.connected_storage == {"nfs1": "/var/lib/kestrel/mnt/nfs1"}
    monitor.cycle(poll_vms=False)
    assert len(_connects(agent)) == 2


def test_a_reported_mount_failure_is_not_retried_on_every_heartbeat(engine, nfs_cluster, agents):
    monitor = Monitor(engine, Intervals())
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=nfs_cluster)
    agent = agents["10.0.0.1"]
    agent.connected_storage.clear()
    agent.mount_errors = {"nfs1": "cannot mount: mount.nfs: No route to host"}
    monitor.cycle(poll_vms=False)  # forgotten: connect again, which fails
    monitor.cycle(poll_vms=False)  # the agent reports the failure: no retry
    monitor.cycle(poll_vms=False)
    assert len(_connects(agent)) == 2
    assert engine.storage_domains.info("nfs1")[0]["hosts"]["h1"]["available"] is False


def test_activate_connects_the_domains(engine, nfs_cluster, agents):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=nfs_cluster)
    engine.hosts.maintenance("h1")
    agent = agents["10.0.0.1"]
    agent.connected_storage.clear()
    engine.hosts.activate("h1")
    assert len(_connects(agent)) == 2
    assert agent.connected_storage == {"nfs1": "/var/lib/kestrel/mnt/nfs1"}


def test_attach_connects_detach_and_remove_disconnect(engine, cluster, agents):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    engine.hosts.maintenance("h2")  # not Up: left alone
    engine.storage_domains.ensure("nfs1", type="nfs", export=EXPORT, path="/var/lib/kestrel/mnt/nfs1",
                                  clusters=[], check_mode=True)
    assert not hasattr(agents["10.0.0.1"], "storage_calls")

    attached = engine.storage_domains.ensure("nfs1", type="nfs", export=EXPORT,
                                             path="/var/lib/kestrel/mnt/nfs1", clusters=[cluster])
    assert agents["10.0.0.1"].storage_calls == [("connect", "nfs1", EXPORT, "/var/lib/kestrel/mnt/nfs1")]
    assert attached.entity["hosts"]["h1"] == {"available": True, "path": "/var/lib/kestrel/mnt/nfs1"}
    assert not hasattr(agents["10.0.0.2"], "storage_calls")
    # The same attachment again: no agent call at all.
    engine.storage_domains.ensure("nfs1", clusters=[cluster])
    assert len(agents["10.0.0.1"].storage_calls) == 1

    engine.storage_domains.ensure("nfs1", clusters=[])
    assert agents["10.0.0.1"].storage_calls[-1] == ("disconnect", "nfs1")
    assert "storage domain 'nfs1' disconnected (/var/lib/kestrel/mnt/nfs1 unmounted)" in \
        [e["message"] for e in engine.events.info(entity_name="h1")]

    engine.storage_domains.ensure("nfs1", clusters=[cluster])
    engine.storage_domains.remove("nfs1")
    assert agents["10.0.0.1"].storage_calls[-2:] == [("connect", "nfs1", EXPORT, "/var/lib/kestrel/mnt/nfs1"),
                                                     ("disconnect", "nfs1")]
    assert agents["10.0.0.1"].connected_storage == {}


def test_a_refused_disconnect_is_audited_and_detach_still_happens(engine, cluster, agents):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.storage_domains.ensure("nfs1", type="nfs", export=EXPORT, path="/var/lib/kestrel/mnt/nfs1",
                                  clusters=[cluster])

    def refuse(name):
        raise Conflict(f"storage domain '{name}' holds disks of VMs on this host")

    agents["10.0.0.1"].disconnect_storage = refuse
    assert engine.storage_domains.ensure("nfs1", clusters=[]).entity["clusters"] == []
    last = engine.events.info(entity_name="h1")[-1]
    assert last["severity"] == "warning" and "could not be disconnected" in last["message"]
