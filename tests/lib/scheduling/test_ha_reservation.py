"""HA reservation: could any one failed host's HA VMs restart elsewhere, and the weight that keeps it so."""

from engine_lib.scheduling import Context, HostState, VmRequest, place, resolve
from engine_lib.scheduling.ha_reservation import can_spare, shortfall, shortfall_with


def host(name, memory=4096, claimed=0, cpus=4, status="Up"):
    return HostState(name, status, cpus, memory, claimed_mib=claimed,
                     claimed_guaranteed_mib=claimed)


def ha(name, memory, vcpus=1):
    return VmRequest(name, vcpus, memory, highly_available=True)


def test_a_host_whose_ha_vms_do_not_fit_on_the_others_is_in_the_shortfall():
    ha_vms = {"h1": [ha("a", 3000)]}
    assert shortfall([host("h1", claimed=3000), host("h2")], ha_vms) == []
    # h2 runs 2000 MiB of ordinary VMs: 2096 MiB left, not enough for a.
    assert shortfall([host("h1", claimed=3000), host("h2", claimed=2000)], ha_vms) == ["h1"]


def test_the_ha_vms_of_one_host_share_the_others_room_largest_first():
    # Largest first: b (2000) takes h2, a (1000) h3. In the given order a would take h2
    # first and b would find no room.
    ha_vms = {"h1": [ha("a", 1000), ha("b", 2000)]}
    hosts = [host("h1", claimed=3000), host("h2", memory=2000), host("h3", memory=1000)]
    assert shortfall(hosts, ha_vms) == []
    # Two VMs of 1500 MiB on two hosts with 2000 free each: a third of 1000 fits nowhere.
    ha_vms = {"h1": [ha("a", 1500), ha("b", 1500), ha("c", 1000)]}
    hosts = [host("h1", claimed=4000), host("h2", memory=2000), host("h3", memory=2000)]
    assert shortfall(hosts, ha_vms) == ["h1"]


def test_every_host_is_the_failed_one_in_turn_and_hosts_not_up_take_nothing():
    ha_vms = {"h1": [ha("a", 3000)], "h2": [ha("b", 3000)]}
    # Each host holds 3000 of its own: neither has room for the other's.
    assert shortfall([host("h1", claimed=3000), host("h2", claimed=3000)], ha_vms) == ["h1", "h2"]
    # A host in maintenance is neither a refuge nor counted as failing.
    hosts = [host("h1", claimed=3000), host("h2", claimed=3000, status="Maintenance"),
             host("h3")]
    assert shortfall(hosts, ha_vms) == []


def test_a_restart_needs_as_many_cpus_as_the_vm_has_vcpus():
    ha_vms = {"h1": [ha("a", 512, vcpus=4)]}
    assert shortfall([host("h1", claimed=512), host("h2", cpus=2)], ha_vms) == ["h1"]
    assert shortfall([host("h1", claimed=512), host("h2", cpus=4)], ha_vms) == []


def test_a_lone_host_with_ha_vms_has_nowhere_to_restart_them():
    assert shortfall([host("h1", claimed=100)], {"h1": [ha("a", 100)]}) == ["h1"]
    assert shortfall([host("h1")], {}) == []


def test_can_spare_a_host_only_if_the_reservation_holds_without_it():
    ha_vms = {"h1": [ha("a", 3000)]}
    hosts = [host("h1", claimed=3000), host("h2"), host("h3")]
    assert can_spare(hosts, ha_vms, "h3")  # h2 still takes a
    hosts = [host("h1", claimed=3000), host("h2", claimed=2000), host("h3")]
    assert not can_spare(hosts, ha_vms, "h3")  # only h3 has room for a
    assert not can_spare(hosts, ha_vms, "h1")  # it runs HA VMs


def test_shortfall_with_counts_an_ha_vm_on_its_new_host_and_gives_back_its_old_room():
    from engine_lib.scheduling.ha_reservation import rooms
    up = rooms([host("h1"), host("h2", memory=2048)])
    # An HA VM of 3000 MiB on h1 could restart nowhere (h2 has 2048).
    assert shortfall_with(up, {}, ha("a", 3000), "h1") == ["h1"]
    assert shortfall_with(up, {}, ha("a", 2000), "h1") == []
    # Migrating h2 -> h1: its old entry on h2 goes, h2's room comes back.
    up = rooms([host("h1"), host("h2", memory=4096, claimed=2000)])
    moving = VmRequest("a", 1, 2000, highly_available=True, current_host="h2")
    assert shortfall_with(up, {"h2": [ha("a", 2000)]}, moving, "h1") == []


def test_resolve_adds_the_weight_only_for_a_cluster_with_ha_reservation():
    assert "ha_reservation" not in dict(resolve("evenly_distributed").weights)
    policy = resolve("evenly_distributed", {"high_utilization": 70}, ha_reservation=True)
    assert dict(policy.weights)["ha_reservation"] == 3.0
    assert policy.param("high_utilization") == 70
    assert [w["name"] for w in policy.describe()["weights"]][-1] == "ha_reservation"
    assert policy.with_ha_reservation().weights == policy.weights


def test_the_weight_prefers_the_host_that_keeps_every_ha_vm_restartable():
    # h1 runs HA VM a (3000 MiB). The new ordinary VM b (2000 MiB) fits on h2 and h3;
    # memory_even prefers h2 (more left), but then h2 keeps 2500 MiB and a could restart
    # nowhere. On h3, h2 keeps its 4500 MiB for a.
    hosts = [host("h1", claimed=3000), host("h2", memory=4500), host("h3", memory=2500)]
    b = VmRequest("b", 1, 2000)
    assert place(b, hosts, resolve("none")).host == "h2"
    ctx = Context(ha_vms={"h1": [ha("a", 3000)]})
    decision = place(b, hosts, resolve("none", ha_reservation=True), ctx)
    assert decision.host == "h3"
    units = {row["host"]: row["units"]["ha_reservation"] for row in decision.weight_table()}
    assert units == {"h2": 0.0, "h3": 3.0}  # the factor: outweighs cpu and memory together
    # Without the cluster's HA VMs in the context the weight has no opinion.
    assert place(b, hosts, resolve("none", ha_reservation=True)).host == "h2"


def test_the_weight_has_no_opinion_when_every_host_keeps_or_breaks_the_reservation():
    hosts = [host("h1", claimed=3000), host("h2", memory=8192), host("h3", memory=8192)]
    decision = place(VmRequest("b", 1, 1000), hosts, resolve("none", ha_reservation=True),
                     Context(ha_vms={"h1": [ha("a", 3000)]}))
    assert {row["units"]["ha_reservation"] for row in decision.weight_table()} == {0.0}
