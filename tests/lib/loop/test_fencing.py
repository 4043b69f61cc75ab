"""Fencing decisions, the fence-agents interface and the fencing settings' checks."""

import re
import sys
from types import SimpleNamespace

import pytest
from sqlalchemy import text as sa_text

from engine_lib.config import EngineConfig
from engine_lib.loop.fencing import (
    POWER_FENCE,
    SKIP,
    SOFT_FENCE,
    WAIT,
    connectivity_broken,
    decide,
    power_off,
    power_on,
)
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services.fencing_settings import (
    FencingPolicy,
    fence_agent_path,
    normalize_policy,
    normalize_power_management,
)

UP, CONNECTING, NON_RESPONSIVE, MAINTENANCE = "Up", "Connecting", "NonResponsive", "Maintenance"

# A fence device in a file: "on" or "off". Logs every call's stdin options.
FENCE_AGENT = f"""#!{sys.executable}
import json, sys
options = dict(line.split("=", 1) for line in sys.stdin.read().splitlines() if "=" in line)
with open(options["state_file"] + ".log", "a") as log:
    log.write(json.dumps(options) + "\\n")
state = open(options["state_file"]).read()
if options["action"] == "status":
    sys.exit(2 if state == "off" else 0)
if options.get("stuck") != "yes":
    open(options["state_file"], "w").write("off" if options["action"] == "off" else "on")
sys.exit(0)
"""


@pytest.fixture
def device(tmp_path):
    agent = tmp_path / "fence_test"
    agent.write_text(FENCE_AGENT)
    agent.chmod(0o755)
    state = tmp_path / "power"
    state.write_text("on")
    return {"agent": str(agent), "options": {"ip": "10.0.0.2", "plug": "h2",
                                             "state_file": str(state)}}


def calls(device) -> list[dict]:
    import json

    with open(device["options"]["state_file"] + ".log") as log:
        return [json.loads(line) for line in log]


# -- the connectivity rule ---------------------------------------------------------------------

@pytest.mark.parametrize("statuses, broken", [
    ([NON_RESPONSIVE, UP, UP], False),  # 1 of 3: fence
    ([NON_RESPONSIVE, CONNECTING, UP, UP], True),  # 2 of 4 is half: the engine's network
    ([NON_RESPONSIVE, UP, MAINTENANCE], True),  # Maintenance counts neither way: 1 of 2
    ([NON_RESPONSIVE], True),  # a one-host cluster cannot tell
])
def test_fencing_is_skipped_when_half_or_more_hosts_lost_connectivity(statuses, broken):
    assert connectivity_broken(statuses, 50)[0] is broken


def test_the_connectivity_threshold_is_the_clusters():
    assert connectivity_broken([NON_RESPONSIVE, CONNECTING, UP, UP], 75)[0] is False


# -- what to do next ---------------------------------------------------------------------------

POLICY = FencingPolicy(soft_fence_grace_s=30)
HEALTHY = [NON_RESPONSIVE, UP, UP]


def test_a_non_responsive_host_is_soft_fenced_first_then_power_fenced_after_the_grace():
    assert decide(POLICY, "", float("inf"), HEALTHY, True).action == SOFT_FENCE
    assert decide(POLICY, "soft", 10, HEALTHY, True).action == WAIT
    assert decide(POLICY, "soft", 31, HEALTHY, True).action == POWER_FENCE
    assert decide(POLICY, "fenced", 31, HEALTHY, True).action == SKIP


def test_without_power_management_nothing_is_power_fenced():
    decision = decide(POLICY, "soft", 31, HEALTHY, False)
    assert decision.action == SKIP and "no power management" in decision.reason


def test_a_disabled_policy_or_broken_connectivity_fences_nothing():
    assert decide(FencingPolicy(enabled=False), "", 0, HEALTHY, True).action == SKIP
    broken = decide(POLICY, "", 0, [NON_RESPONSIVE, NON_RESPONSIVE, UP], True)
    assert broken.action == SKIP and "2 of 3 hosts" in broken.reason
    lenient = FencingPolicy(skip_if_connectivity_broken=False)
    assert decide(lenient, "", 0, [NON_RESPONSIVE, NON_RESPONSIVE, UP], True).action == SOFT_FENCE


# -- the fence-agents interface ----------------------------------------------------------------

def test_power_off_sends_options_on_stdin_and_waits_for_status_off(device):
    result = power_off(device, timeout=10)
    assert result.ok and "power off confirmed by fence_test status" in result.detail
    sent = calls(device)
    assert [c["action"] for c in sent] == ["off", "status"]
    assert sent[0] == {"action": "off", **device["options"]}
    assert power_on(device, timeout=10).ok
    assert calls(device)[-1]["action"] == "on"


def test_a_device_that_never_says_off_is_no_proof(device):
    device["options"]["stuck"] = "yes"
    result = power_off(device, timeout=0.5, poll_s=0.1)
    assert not result.ok and "did not say off" in result.detail


def test_an_agent_that_cannot_run_is_a_failure(tmp_path):
    result = power_off({"agent": str(tmp_path / "missing"), "options": {}}, timeout=1)
    assert not result.ok and "exit -1" in result.detail


# -- which fence agents may run ----------------------------------------------------------------

@pytest.fixture(autouse=True)
def sbin(tmp_path, monkeypatch):
    """The system's fence agent directory, with fence_ipmilan (and one not executable)."""
    system = tmp_path / "sbin"
    system.mkdir()
    for name in ("fence_ipmilan", "fence_unusable"):
        (system / name).write_text("#!/bin/sh\nexit 0\n")
    (system / "fence_ipmilan").chmod(0o755)
    monkeypatch.setattr("engine_lib.services.fencing_settings.FENCE_AGENT_DIR", str(system))
    return str(system)


@pytest.fixture
def config(tmp_path):
    """An engine whose administrator listed one extra agent."""
    listed = tmp_path / "lab" / "fence_lab"
    listed.parent.mkdir()
    listed.write_text("#!/bin/sh\nexit 0\n")
    listed.chmod(0o755)
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    config = EngineConfig.resolve(str(engine_dir), "sqlite://")
    config.fence_agents_file.write_text(f"# lab\n{listed}\n/bin/sh\nrelative/fence_x\n")
    return config


def test_fence_agents_resolve_by_name_in_the_system_directory_or_the_administrators_list(
        config, sbin):
    assert fence_agent_path("a", "fence_ipmilan", config) == f"{sbin}/fence_ipmilan"
    assert fence_agent_path("a", "fence_lab", config) == str(
        config.engine_dir.parent / "lab" / "fence_lab")


@pytest.mark.parametrize("name, reason", [
    ("/bin/sh", "not a path"),
    ("/usr/sbin/fence_ipmilan", "not a path"),
    ("../../bin/sh", "not a path"),
    ("fence_../../bin/sh", "not a path"),
    ("sh", "not a path"),  # listed by the administrator, but not a fence agent's name
    ("fence_absent", "no fence agent 'fence_absent'"),
    ("fence_unusable", "no fence agent 'fence_unusable'"),  # not executable
    ("fence_x", "no fence agent 'fence_x'"),  # a relative line in the list is ignored
    ("fence_ipmilan\n", "not a path"),
    (None, "not a path"),
])
def test_fence_agent_resolution_refuses_paths_and_unknown_names(config, name, reason):
    with pytest.raises(InvalidSpec, match=re.escape(reason)) as err:
        fence_agent_path("power_management.agent", name, config)
    assert err.value.field == "power_management.agent"


def test_a_host_cannot_name_a_path_as_its_fence_agent(engine, cluster):
    with pytest.raises(InvalidSpec) as err:
        engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster,
                            power_management={"agent": "/bin/sh", "options": {}})
    assert err.value.field == "power_management.agent"
    assert engine.hosts.info() == []


def test_the_loop_resolves_the_stored_name_again_and_never_runs_a_stored_path(
        engine, cluster, monkeypatch):
    from engine_lib.loop.fencing import Fencer

    ran = []
    monkeypatch.setattr("engine_lib.loop.fencing.power_off",
                        lambda pm, timeout: ran.append(pm["agent"]))
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    with engine.store.transaction() as session:  # what an old engine may have stored
        session.execute(sa_text("UPDATE hosts SET power_management = :pm, status = "
                                "'NonResponsive', fence_state = 'soft'"),
                        {"pm": '{"agent": "/bin/sh", "options": {}}'})
    Fencer(engine, "/nonexistent", on_fenced=lambda *a: None)._power_fence(
        "h1", engine_host_pm(engine), FencingPolicy())
    assert ran == []
    message = engine.events.info(entity_type="host", entity_name="h1")[-1]["message"]
    assert "power fence failed: power_management.agent: must name a fence agent" in message


def engine_host_pm(engine) -> dict:
    from engine_lib.model import Host

    with engine.store.transaction(commit=False) as session:
        return dict(session.query(Host).one().power_management)


# -- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, field", [
    ({"agent": "/usr/sbin/fence_ipmilan"}, "power_management.agent"),  # a path
    ({"agent": "fence_ipmilan", "options": {"ip": "a\naction=on"}},
     "power_management.options.ip"),
    ({"agent": "fence_ipmilan", "options": {"action": "off"}},
     "power_management.options.action"),
    ({"agent": "fence_ipmilan", "options": {"bad key": "x"}}, "power_management.options"),
    ({"agent": "fence_ipmilan", "options": {"ipport": float("nan")}},
     "power_management.options.ipport"),
    ({"agent": "fence_ipmilan", "options": {"ipport": 10 ** 5000}},
     "power_management.options.ipport"),
    ({"agent": "fence_ipmilan", "user": "x"}, "power_management.user"),
    ("fence_ipmilan", "power_management"),
])
def test_bad_power_management_names_the_field(value, field, config):
    with pytest.raises(InvalidSpec) as err:
        normalize_power_management("power_management", value, config)
    assert err.value.field == field


def test_power_management_options_become_text(config):
    assert normalize_power_management("pm", {"agent": "fence_lab",
                                             "options": {"ip": "10.0.0.9", "ipport": 623}},
                                      config) == {
        "agent": "fence_lab", "options": {"ip": "10.0.0.9", "ipport": "623"}}
    assert normalize_power_management("pm", {}, config) == {}


@pytest.mark.parametrize("value, field", [
    ({"enable": True}, "fencing_policy.enable"),
    ({"connectivity_threshold_percent": 0}, "fencing_policy.connectivity_threshold_percent"),
    ({"enabled": "yes"}, "fencing_policy.enabled"),
    ({"soft_fence_grace_s": True}, "fencing_policy.soft_fence_grace_s"),
    ({"power_timeout_s": -1}, "fencing_policy.power_timeout_s"),
    ({"power_timeout_s": float("inf")}, "fencing_policy.power_timeout_s"),
    ({"power_timeout_s": float("nan")}, "fencing_policy.power_timeout_s"),
    ({"soft_fence_grace_s": float("-inf")}, "fencing_policy.soft_fence_grace_s"),
    ({"ssh_timeout_s": 1e308}, "fencing_policy.ssh_timeout_s"),
    ({"soft_fence_grace_s": 10 ** 5000}, "fencing_policy.soft_fence_grace_s"),
    ({"connectivity_threshold_percent": float("nan")},
     "fencing_policy.connectivity_threshold_percent"),
    ({"connectivity_threshold_percent": 50.5}, "fencing_policy.connectivity_threshold_percent"),
])
def test_bad_fencing_policy_names_the_field(value, field):
    with pytest.raises(InvalidSpec) as err:
        normalize_policy("fencing_policy", value)
    assert err.value.field == field


# -- through the services ----------------------------------------------------------------------

def test_a_clusters_fencing_policy_is_partial_and_idempotent(engine, cluster):
    assert engine.clusters.get(cluster)["fencing_policy"] == normalize_policy("f", {})
    first = engine.clusters.ensure(cluster, fencing_policy={"soft_fence_grace_s": 5})
    assert first.changed and first.entity["fencing_policy"]["soft_fence_grace_s"] == 5
    again = engine.clusters.ensure(cluster, fencing_policy={"enabled": True})
    assert not again.changed and again.entity["fencing_policy"]["soft_fence_grace_s"] == 5
    with pytest.raises(InvalidSpec):
        engine.clusters.ensure(cluster, fencing_policy={"enabled": 1})
    assert engine.clusters.get(cluster)["fencing_policy"]["enabled"] is True


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 10 ** 400])
def test_a_cluster_refuses_a_fencing_duration_that_is_not_finite_and_bounded(
        engine, cluster, value):
    # Before: SQLite stored Infinity and PostgreSQL raised a raw DataError.
    with pytest.raises(InvalidSpec) as err:
        engine.clusters.ensure(cluster, fencing_policy={"power_timeout_s": value})
    assert err.value.field == "fencing_policy.power_timeout_s"
    with pytest.raises(InvalidSpec):
        engine.clusters.ensure("c2", fencing_policy={"ssh_timeout_s": value})
    assert engine.clusters.get(cluster)["fencing_policy"]["power_timeout_s"] == 60.0
    assert [c["name"] for c in engine.clusters.info()] == [cluster]


def test_a_hosts_power_management_is_kept_unless_given(engine, cluster):
    pm = {"agent": "fence_ipmilan", "options": {"ip": "10.0.1.1"}}
    added = engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster, power_management=pm,
                                soft_fence_command="/etc/kestrel/lab-boot restart")
    assert added.entity["power_management"] == pm
    same = engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    assert not same.changed and same.entity["power_management"] == pm
    removed = engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster, power_management={})
    assert removed.changed and removed.diff["before"]["power_management"] == pm
    with pytest.raises(InvalidSpec) as err:
        engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster, soft_fence_command="a\nb")
    assert err.value.field == "soft_fence_command"
    assert engine.hosts.info("h1")[0]["soft_fence_command"] == "/etc/kestrel/lab-boot restart"


def test_fence_device_passwords_are_never_shown(engine, cluster):
    pm = {"agent": "fence_ipmilan", "options": {"ip": "10.0.1.1", "password": "s3cret"}}
    added = engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster, power_management=pm)
    assert added.entity["power_management"]["options"] == {"ip": "10.0.1.1",
                                                           "password": "********"}
    assert "s3cret" not in repr(added.diff) + repr(engine.hosts.info())
    changed = engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster, power_management={
        **pm, "options": {**pm["options"], "password": "n3w"}})
    assert changed.changed  # compared on the real values


def test_the_lab_fence_agent_reads_fence_agents_stdin_and_refuses_unknown_hosts(tmp_path):
    from kestrel_lab.fence import fence, parse_stdin

    assert parse_stdin("# comment\naction=status\nplug = h2\n\nstate_dir=/x\n") == {
        "action": "status", "plug": "h2", "state_dir": "/x"}
    code, message = fence({"action": "status", "plug": "h9", "state_dir": str(tmp_path)})
    assert code == 1 and "no such lab host" in message  # never "off" for a stranger
    assert fence({"action": "status"})[0] == 1


# -- the soft fence's SSH login ----------------------------------------------------------------

def test_soft_fencing_logs_in_only_to_the_recorded_host_key(engine, cluster, monkeypatch):
    from engine_lib.loop import fencing
    from engine_lib.loop.fencing import Fencer, Result

    key = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHTvFLHHIlbjUYdSOw1WMqKHRlK9Lr6qUL1D8skK0pCl")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster, ssh_host_keys=[key])
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)  # no keys recorded
    engine.clusters.ensure(cluster, fencing_policy={"skip_if_connectivity_broken": False})
    with engine.store.transaction() as session:
        session.execute(sa_text("UPDATE hosts SET status = 'NonResponsive'"))
    argvs = []
    monkeypatch.setattr(fencing.subprocess, "run", lambda argv, **kw: argvs.append(argv) or
                        SimpleNamespace(returncode=0, stdout="", stderr=""))
    fencer = Fencer(engine, "/e/ssh/id_ed25519", on_fenced=lambda *a: None)

    fencer.step("h1")
    [argv] = argvs
    assert "StrictHostKeyChecking=yes" in argv and "HostKeyAlias=kestrel-host-h1" in argv
    assert "StrictHostKeyChecking=no" not in argv and "UserKnownHostsFile=/dev/null" not in argv
    known = next(a.split("=", 1)[1] for a in argv if a.startswith("UserKnownHostsFile="))
    assert open(known).read() == f"kestrel-host-h1 {key}\n"

    fencer.soft_fence = lambda *args: Result(True, "never called")
    fencer.step("h2")
    assert len(argvs) == 1
    message = engine.events.info(entity_type="host", entity_name="h2")[-1]["message"]
    assert "soft fence" in message and "failed" in message
    assert "no SSH host key is recorded for host 'h2'" in message
