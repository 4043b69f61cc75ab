"""The pure scheduler: each filter removes hosts with a reason, weights rank the rest."""

import random

import pytest

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.scheduling import (
    POLICIES,
    AffinityGroup,
    Context,
    HostState,
    HostTable,
    VmRequest,
    place,
    resolve,
)
from engine_lib.scheduling.reference import place_reference


def host(name, **kw):
    base = dict(status="Up", cpus=8, memory_mib=16384)
    base.update(kw)
    return HostState(name, **base)


def vm(name="vm", **kw):
    base = dict(vcpus=2, memory_mib=2048)
    base.update(kw)
    return VmRequest(name, **base)


@pytest.mark.parametrize("request_, hosts, filter_name, reason", [
    (vm(), [host("a", status="Maintenance")], "status", "host status is Maintenance, not Up"),
    (vm(vcpus=16), [host("a")], "cpu", "needs 16 vCPUs, host has 8 CPUs"),
    (vm(memory_mib=4096), [host("a", memory_mib=8192, claimed_mib=6144)], "memory",
     "needs 4096 MiB, has 2048 MiB schedulable (8192 MiB at 100% overcommit, 6144 MiB claimed)"),
    (vm(memory_mib=4096), [host("a", memory_mib=4096, overcommit_percent=200, used_memory_mib=2048)],
     "memory", "guaranteed memory 4096 MiB exceeds the 2048 MiB physically free"),
    (vm(cpu_model="Icelake-Server"), [host("a", cpu_model="Haswell")], "cpu_model",
     "host CPU Haswell cannot provide CPU model Icelake-Server"),
    (vm(machine="q35"), [host("a", machines=frozenset({"pc-i440fx-8.2"}))], "emulated_machine",
     "host offers machine types pc-i440fx-8.2, not q35"),
    (vm(networks=frozenset({"data", "mgmt"})), [host("a", networks=frozenset({"mgmt"}))],
     "network", "host lacks network(s) data"),
    (vm(pinned_hosts=("b",)), [host("a"), host("b")], "pinned_hosts", "the VM is pinned to b"),
    (vm(hooks=frozenset({"vhostmd"})), [host("a", hooks=frozenset())], "hooks",
     "host lacks hook(s) vhostmd"),
    (vm(current_host="a"), [host("a"), host("b")], "migration", "the VM already runs on this host"),
    (vm(hugepage_kib=2048, memory_mib=1024), [host("a", hugepages_free={2048: 100})], "hugepages",
     "needs 512 free 2048 KiB huge pages, host has 100"),
])
def test_each_filter_removes_a_host_and_says_why(request_, hosts, filter_name, reason):
    decision = place(request_, hosts)
    assert decision.filtered["a"] == reason
    assert decision.explain()["removed_by"][filter_name] == ["a"]
    # The per-host reference loop gives the very same reason.
    assert place_reference(request_, hosts)[1]["a"] == reason


def test_unreported_host_facts_do_not_filter():
    unknown = host("a")  # no networks, hooks, machines or CPU model reported
    request = vm(networks=frozenset({"data"}), hooks=frozenset({"x"}), machine="q35",
                 cpu_model="Skylake-Server")
    assert place(request, [unknown]).host == "a"


def test_newer_cpu_of_the_same_line_passes_other_vendor_does_not():
    hosts = [host("intel", cpu_model="Icelake-Server"), host("amd", cpu_model="EPYC-Milan")]
    decision = place(vm(cpu_model="Haswell"), hosts)
    assert decision.host == "intel" and "amd" in decision.filtered


def test_hard_vm_affinity_and_anti_affinity():
    hosts = [host("a"), host("b"), host("c")]
    groups = [AffinityGroup("together", vm_rule="positive"), AffinityGroup("apart", vm_rule="negative")]
    ctx = Context(groups, [("web1", "b", ["together"]), ("db1", "a", ["apart"])])
    assert place(vm("web2", affinity_groups=("together",)), hosts, context=ctx).host == "b"
    apart = place(vm("db2", affinity_groups=("apart",)), hosts, context=ctx)
    assert apart.host in ("b", "c")
    assert apart.filtered["a"] == "affinity group apart (negative, enforcing): another VM of it runs here"


def test_hard_and_soft_vm_host_affinity():
    hosts = [host("a"), host("b"), host("c")]
    ctx = Context([AffinityGroup("only-c", host_rule="positive", hosts=("c",)),
                   AffinityGroup("likes-b", host_rule="positive", host_enforcing=False, hosts=("b",))])
    hard = place(vm(affinity_groups=("only-c",)), hosts, context=ctx)
    assert hard.host == "c"
    assert hard.filtered == {h: "affinity group only-c (positive, enforcing) allows only c"
                             for h in ("a", "b")}
    soft = place(vm(affinity_groups=("likes-b",)), hosts, context=ctx)
    assert soft.host == "b" and not soft.filtered
    assert soft.explain()["weight_table"][0]["units"]["host_affinity"] == 5.0


def test_weights_are_normalized_and_scaled_by_the_policy_factors():
    hosts = [host("idle", used_cpu_percent=5), host("half", used_cpu_percent=30),
             host("busy", used_cpu_percent=50)]
    even = place(vm(), hosts, POLICIES["evenly_distributed"])
    packed = place(vm(), hosts, POLICIES["power_saving"])
    assert even.host == "idle" and packed.host == "busy"
    for decision in (even, packed):
        for row in decision.explain()["weight_table"]:
            factors = decision.explain()["factors"]
            assert all(0.0 <= share <= factors[unit] for unit, share in row["units"].items())
            assert row["total"] == pytest.approx(sum(row["units"].values()))


def test_power_saving_avoids_hosts_pushed_over_the_high_threshold():
    hosts = [host("low", used_cpu_percent=30), host("hot", used_cpu_percent=79)]
    assert place(vm(vcpus=2), hosts, POLICIES["power_saving"]).host == "low"


def test_vm_evenly_distributed_prefers_fewest_vms():
    hosts = [host("many", vm_count=9, claimed_mib=1000), host("few", vm_count=1, claimed_mib=9000)]
    assert place(vm(), hosts, POLICIES["vm_evenly_distributed"]).host == "few"
    assert place(vm(), hosts, POLICIES["evenly_distributed"]).host == "many"


def test_cluster_maintenance_starts_only_highly_available_vms():
    hosts = [host("a")]
    policy = POLICIES["cluster_maintenance"]
    refused = place(vm(), hosts, policy)
    assert refused.host is None
    assert refused.filtered["a"].startswith("the cluster's policy is cluster_maintenance")
    assert place(vm(highly_available=True), hosts, policy).host == "a"


def test_ties_go_to_the_first_name():
    assert place(vm(), [host("b"), host("a")]).host == "a"


def test_a_table_claim_is_seen_by_the_next_placement_and_the_explanation_keeps_its_moment():
    table = HostTable([host("a", memory_mib=4096)])
    first = place(vm("one", memory_mib=4096), table)
    table.claim(first.host_index, vm("one", memory_mib=4096))
    second = place(vm("two", memory_mib=4096), table)
    table.release(first.host_index, vm("one", memory_mib=4096))
    assert first.host == "a" and second.host is None
    assert "has 0 MiB schedulable" in second.explain()["filtered"]["a"]


def test_policy_parameters_are_validated_by_name():
    policy = resolve("evenly_distributed", {"high_utilization": 70})
    assert policy.params == {"high_utilization": 70, "cpu_overcommit_duration_minutes": 2,
                             "vm_cooldown_minutes": 30}
    with pytest.raises(InvalidSpec) as err:
        resolve("evenly_distributed", {"low_utilization": 10})
    assert err.value.field == "scheduling_policy_properties.low_utilization"
    with pytest.raises(InvalidSpec) as err:
        resolve("power_saving", {"high_utilization": 101})
    assert "from 1 to 100" in err.value.reason
    with pytest.raises(InvalidSpec) as err:
        resolve("fastest")
    assert err.value.field == "scheduling_policy"


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_vectorized_placement_agrees_with_the_per_host_loop(policy):
    rng = random.Random(policy)
    groups = [AffinityGroup("g1", vm_rule="negative"), AffinityGroup("g2", vm_rule="positive",
              vm_enforcing=False), AffinityGroup("g3", host_rule="negative", hosts=("h3", "h7"))]
    hosts = [host(f"h{i}", status=rng.choice(["Up"] * 5 + ["Maintenance"]),
                  cpus=rng.choice([2, 4, 8]), memory_mib=rng.choice([2048, 4096, 8192]),
                  claimed_mib=rng.choice([0, 1024, 2048]), claimed_vcpus=rng.randint(0, 6),
                  used_cpu_percent=rng.uniform(0, 95), vm_count=rng.randint(0, 9),
                  networks=frozenset(rng.sample(["mgmt", "data", "storage"], rng.randint(1, 3))),
                  cpu_model=rng.choice(["Haswell", "Skylake-Server", None]))
             for i in range(40)]
    table = HostTable(hosts)
    ctx = Context(groups)
    for n in range(60):
        request = vm(f"vm{n}", vcpus=rng.choice([1, 2, 4]), memory_mib=rng.choice([512, 1024, 2048]),
                     networks=frozenset(rng.sample(["mgmt", "data"], rng.randint(0, 2))),
                     cpu_model=rng.choice([None, "Haswell", "Skylake-Server"]),
                     affinity_groups=tuple(rng.sample(["g1", "g2", "g3"], rng.randint(0, 2))),
                     highly_available=rng.random() < 0.5)
        decision = place(request, table, POLICIES[policy], ctx)
        states = [table.state(i) for i in range(table.size)]
        chosen, filtered, weights = place_reference(request, states, POLICIES[policy], ctx)
        assert (decision.host, decision.filtered) == (chosen, filtered)
        assert decision.weights == pytest.approx(weights)
        if decision.host:
            table.claim(decision.host_index, request)
            ctx.record(request.name, decision.host, request.affinity_groups)
