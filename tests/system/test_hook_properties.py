"""Custom properties reach a real host's hooks only as the cluster allows, and namespaced.

A bash hook in a lab host records the environment it was started with
(/proc/$$/environ). Bash runs the file BASH_ENV names before any script, so a
VM owner who could set BASH_ENV for a hook would run code as root.
"""

from __future__ import annotations

import pytest

from engine_lib.protocol.errors import InvalidSpec

pytestmark = pytest.mark.lab

HOOK_DIR = "/etc/kestrel/hooks/before_vm_start"
SCRIPT = f"{HOOK_DIR}/50_record_env"
RECORD = "/etc/kestrel/hook-environ"  # /etc/kestrel is private to each lab host
PAYLOAD, OWNED = "/etc/kestrel/payload", "/etc/kestrel/owned"


@pytest.fixture
def agent(agents):
    """The first lab host, with the recording hook and a payload a hostile BASH_ENV names."""
    agent = agents[0]
    agent.run(["mkdir", "-p", HOOK_DIR])
    agent.run(["chmod", "755", "/etc/kestrel/hooks", HOOK_DIR])
    for path, body in ((SCRIPT, f"#!/bin/bash\ncat /proc/$$/environ > {RECORD}\n"),
                       (PAYLOAD, f"touch {OWNED}\n")):
        agent.run(["sh", "-c", 'cat > "$1" && chmod 755 "$1"', "install", path],
                  input=body.encode())
    yield agent
    agent.run(["rm", "-f", SCRIPT, PAYLOAD, RECORD, OWNED])


def recorded(agent) -> dict[str, str]:
    data = agent.run(["cat", RECORD], text=True).stdout
    return dict(item.split("=", 1) for item in data.split("\0") if item)


def test_a_hook_gets_the_allowed_property_namespaced_and_nothing_else(engine, agent):
    engine.clusters.ensure("lab", virt_type="qemu",
                           custom_properties={"sap_agent": "true|false"})
    engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    spec = {"name": "hooked", "cluster": "lab", "memory": "128MiB", "machine": "pc",
            "custom_properties": {"sap_agent": "true"}, "placement": {"hosts": [agent.name]}}
    with pytest.raises(InvalidSpec) as err:
        engine.vms.ensure({**spec, "custom_properties": {"BASH_ENV": PAYLOAD}}, state="running")
    assert err.value.field == "custom_properties.BASH_ENV"
    assert engine.vms.info("hooked") == []

    vm = engine.vms.ensure(spec, state="running").entity
    try:
        assert vm["status"] == "Up" and vm["host"] == agent.name
        env = recorded(agent)
        assert env.pop("_hook_domxml").startswith("/tmp/kestrel-before_vm_start-")
        assert env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                       "LC_ALL": "C.UTF-8", "vmId": vm["id"], "_hook_point": "before_vm_start",
                       "KESTREL_PROP_sap_agent": "true"}

        # An engine that let BASH_ENV through (older, or its metadata forged): the agent
        # still never hands it to the hook under a name bash reads.
        engine.vms.ensure({"name": "hooked"}, state="stopped", force=True)
        xml = engine.vms.domain_xml("hooked").replace(
            "</kestrel:vm>", f"<kestrel:custom name='BASH_ENV'>{PAYLOAD}</kestrel:custom>"
                             "<kestrel:custom name='PERL5OPT'>-Mx</kestrel:custom></kestrel:vm>")
        client = agent.client()
        assert client.start_vm(xml)["status"] in ("Up", "PoweringUp")
        client.destroy_vm(vm["id"])
        client.remove_vm(vm["id"])
        assert "BASH_ENV" not in recorded(agent) and "PERL5OPT" not in recorded(agent)
        assert agent.run(["test", "-e", OWNED], check=False).returncode == 1
    finally:
        engine.vms.ensure({"name": "hooked"}, state="absent")
