"""Guest-agent reports: the agent's translation of libvirt's answers, and the engine's record."""

from datetime import UTC, datetime, timedelta

from engine_lib.agent import guest_agent
from engine_lib.loop.monitoring import Intervals, Monitor

GUEST_INFO = {  # virDomainGetGuestInfo as libvirt 9 returns it for a small Linux guest
    "user.count": 1, "user.0.name": "root", "user.0.login-time": 1763750000000,
    "os.id": "debian", "os.name": "Debian GNU/Linux", "os.version-id": "12",
    "os.kernel-release": "6.1.0-56-amd64", "os.machine": "x86_64",
    "timezone.name": "UTC", "timezone.offset": 0,
    "hostname": "web1",
    "fs.count": 1, "fs.0.name": "vda", "fs.0.mountpoint": "/mnt/data", "fs.0.fstype": "ext2",
    "fs.0.total-bytes": 61629440, "fs.0.used-bytes": 13312, "fs.0.disk.count": 1,
    "fs.0.disk.0.alias": "vda", "fs.0.disk.0.device": "/dev/vda",
}
ADDRESSES = {  # virDomainInterfaceAddresses(SRC_AGENT)
    "lo": {"hwaddr": "00:00:00:00:00:00", "addrs": [
        {"type": 0, "addr": "127.0.0.1", "prefix": 8}, {"type": 1, "addr": "::1", "prefix": 128}]},
    "eth0": {"hwaddr": "52:54:00:aa:bb:cc", "addrs": [
        {"type": 0, "addr": "192.0.2.10", "prefix": 24},
        {"type": 1, "addr": "fe80::5054:ff:feaa:bbcc", "prefix": 64},
        {"type": 1, "addr": "2001:db8::10", "prefix": 64}]},
}


def test_the_agent_report_groups_libvirts_flat_parameters():
    doc = guest_agent.report(GUEST_INFO, ADDRESSES)
    assert doc["hostname"] == "web1"
    assert doc["os"] == {"id": "debian", "name": "Debian GNU/Linux", "version_id": "12",
                         "kernel_release": "6.1.0-56-amd64", "machine": "x86_64"}
    assert doc["users"] == [{"name": "root", "login_time": 1763750000000}]
    assert doc["filesystems"] == [{"name": "vda", "mountpoint": "/mnt/data", "type": "ext2",
                                   "total_bytes": 61629440, "used_bytes": 13312,
                                   "disks": [{"alias": "vda", "device": "/dev/vda"}]}]
    assert doc["interfaces"][0] == {"name": "eth0", "mac": "52:54:00:aa:bb:cc",
                                    "ips": ["192.0.2.10/24", "fe80::5054:ff:feaa:bbcc/64",
                                            "2001:db8::10/64"]}
    assert doc["ips"] == ["192.0.2.10", "2001:db8::10"]  # no loopback, no link-local
    assert doc["timezone"] == {"name": "UTC", "offset": 0}


def test_a_guest_agent_that_reports_nothing_gives_empty_fields():
    doc = guest_agent.report({}, {})
    assert doc == {"hostname": "", "os": {}, "users": [], "filesystems": [],
                   "interfaces": [], "ips": []}


def test_the_vm_poll_stores_the_guest_report_and_keeps_it_while_the_agent_is_silent(
        engine, cluster, agents):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    vm_id = engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256},
                              state="running").entity["id"]
    assert engine.vms.info("vm1")[0]["guest"]["ips"] == []
    agent = agents["10.0.0.1"]
    agent.guests = {vm_id: guest_agent.report(GUEST_INFO, ADDRESSES)}
    now = [datetime(2026, 11, 21, tzinfo=UTC)]
    monitor = Monitor(engine, Intervals(), clock=lambda: now[0])
    monitor.cycle()
    guest = engine.vms.info("vm1")[0]["guest"]
    assert (guest["ips"], guest["hostname"], guest["os"]["id"]) == \
        (["192.0.2.10", "2001:db8::10"], "web1", "debian")
    assert guest["filesystems"][0]["mountpoint"] == "/mnt/data"

    agent.guests = {}  # the guest agent stops answering: the last report stays
    now[0] += timedelta(seconds=15)
    monitor.cycle()
    assert engine.vms.info("vm1")[0]["guest"]["ips"] == ["192.0.2.10", "2001:db8::10"]

    engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256}, state="stopped")
    assert engine.vms.info("vm1")[0]["guest"]["ips"] == []  # not running: nothing to report
