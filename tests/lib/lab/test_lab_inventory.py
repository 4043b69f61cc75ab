"""The lab's Ansible inventory: what the host role must know about lab hosts."""

from __future__ import annotations

import yaml

from kestrel_lab import hosts


def test_lab_hosts_account_their_cpu_by_cgroup(tmp_path):
    # Lab hosts share the machine's CPUs; only their own cgroups tell their loads apart.
    hosts._write_inventory(str(tmp_path))
    with open(hosts.inventory_path(str(tmp_path))) as handle:
        inventory = yaml.safe_load(handle)
    assert inventory["all"]["children"]["kestrel_hosts"]["vars"][
        "kestrel_host_cpu_accounting"] == "cgroup"


def test_lab_hosts_run_tasks_pipelined(tmp_path):
    # Each task in one SSH round trip: playbooks against the lab about a sixth faster.
    hosts._write_inventory(str(tmp_path))
    with open(hosts.inventory_path(str(tmp_path))) as handle:
        inventory = yaml.safe_load(handle)
    assert inventory["all"]["children"]["kestrel_hosts"]["vars"]["ansible_pipelining"] is True
