#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_info
short_description: Read VMs from the kestrel engine
version_added: 0.1.0
description:
  - List VMs with their configuration, status, host and devices.
  - Filters combine; without any, every VM is returned.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Only the VM with this name.
    type: str
  cluster:
    description: Only VMs of this cluster (which must exist).
    type: str
  host:
    description: Only VMs running on this host (which must exist).
    type: str
extends_documentation_fragment:
  - kestrel.virt.engine
  - kestrel.virt.engine.attributes
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: N/A
"""

EXAMPLES = r"""
- name: Where does vm1 run, and with which devices?
  kestrel.virt.vm_info:
    name: vm1
  register: result

- name: Show it
  ansible.builtin.debug:
    msg: "{{ result.vms[0].name }} is {{ result.vms[0].status }} on {{ result.vms[0].host }}"

- name: Every VM on h1
  kestrel.virt.vm_info:
    host: h1
"""

RETURN = r"""
vms:
  description: The VMs that match, sorted by name; see M(kestrel.virt.vm) for every key.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Engine identifier, also the libvirt domain UUID on its host.
      type: str
    name:
      description: Name of the VM.
      type: str
    cluster:
      description: Cluster of the VM.
      type: str
    status:
      description: Status as the engine knows it (V(Down), V(WaitForLaunch), V(PoweringUp), V(Up), ...).
      type: str
      sample: Up
    host:
      description: Host the VM runs on; null when it does not run.
      type: str
      sample: h1
    memory_mib:
      description: Memory in MiB.
      type: int
      sample: 128
    vcpus:
      description: Number of virtual CPUs.
      type: int
      sample: 1
    devices:
      description:
        - Every device the engine manages, matched to the live domain through
          its C(ua-) alias.
      type: list
      elements: dict
      sample:
        - id: 5f0c1a7e-3a8e-4a49-8d3e-2f7f3bdf0a40
          type: disk
          name: root
          alias: ua-5f0c1a7e-3a8e-4a49-8d3e-2f7f3bdf0a40
          managed: true
          plugged: true
          address: {type: pci, domain: "0x0000", bus: "0x04", slot: "0x00", function: "0x0"}
    snapshots:
      description:
        - The VM's snapshots, oldest first (C(id), C(description), C(status),
          C(use_memory), C(created_at)); M(kestrel.virt.snapshot_info) has each in full.
      type: list
      elements: dict
      sample:
        - id: 0b7c55d2-93c4-4a8e-9b0e-0e6a4a0f0c11
          description: before upgrade
          status: ok
          use_memory: true
          created_at: "2026-12-06T18:00:03+00:00"
    statistics:
      description:
        - The figures of the engine's last statistics poll of the VM's host; empty while
          the VM does not run and before the first poll.
        - C(sampled_at) (ISO 8601); C(cpu_percent) (100 per busy host CPU, as top shows it;
          null until two samples); C(memory_used_mib), C(balloon_current_mib) and
          C(balloon_target_mib) (null without balloon figures); C(net_rx_bps), C(net_tx_bps),
          C(disk_read_bps), C(disk_write_bps) (bytes per second; null until two samples).
        - M(kestrel.virt.stats_info) has their history.
      type: dict
      sample: {sampled_at: "2026-12-06T18:00:03+00:00", cpu_percent: 97.5, memory_used_mib: 310,
               balloon_current_mib: 512, balloon_target_mib: 512, net_rx_bps: 120.0,
               net_tx_bps: 80.0, disk_read_bps: 0.0, disk_write_bps: 2048.0}
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str'),
            cluster=dict(type='str'),
            host=dict(type='str'),
        ),
    )
    p = module.params
    module.query('vms', lambda engine: engine.vms.info(name=p['name'], cluster=p['cluster'], host=p['host']))


if __name__ == '__main__':
    main()
