#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster
short_description: Manage kestrel clusters
version_added: 0.1.0
description:
  - Create, update or remove a cluster in the kestrel engine.
  - A cluster is a set of hosts that share networks, storage and a MAC pool;
    VMs are scheduled onto the hosts of their cluster.
  - Options left unset keep their current value, so a task naming only some
    options never resets the others.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Name of the cluster.
    type: str
    required: true
  state:
    description:
      - V(present) creates the cluster or updates the options given.
      - V(absent) removes it; a cluster that still has hosts or VMs is refused.
    type: str
    choices: [present, absent]
    default: present
  description:
    description: Free text shown to people.
    type: str
  virt_type:
    description:
      - How VMs of this cluster are accelerated. New clusters use V(kvm).
      - V(qemu) (software emulation, TCG) is for hosts without usable KVM, such
        as nested test labs.
    type: str
    choices: [kvm, qemu]
  memory_overcommit:
    description:
      - Percentage of a host's physical memory the scheduler may hand out;
        V(100) (the default for new clusters) means no overcommit.
    type: int
  mac_pool:
    description:
      - MAC address ranges NICs without an explicit MAC get their address
        from, each written C(first-last).
    type: list
    elements: str
  scheduling_policy:
    description:
      - The cluster's scheduling policy, as in oVirt; M(kestrel.virt.scheduling_policy_info)
        lists each policy's filters, weights, balancer and parameters.
      - New clusters use V(none).
    type: str
    choices: [none, evenly_distributed, power_saving, vm_evenly_distributed, cluster_maintenance]
  scheduling_policy_properties:
    description:
      - Values for the policy's parameters, for example C(high_utilization=75) in YAML mapping
        form; a parameter not given keeps the policy's default.
      - Changing O(scheduling_policy) without this option starts the new policy from its defaults.
    type: dict
extends_documentation_fragment:
  - kestrel.virt.engine
  - kestrel.virt.engine.attributes
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: A cluster for a lab without KVM
  kestrel.virt.cluster:
    name: demo
    description: nested test lab
    virt_type: qemu

- name: Allow 150% memory overcommit, keep everything else
  kestrel.virt.cluster:
    name: production
    memory_overcommit: 150

- name: Spread load evenly; move VMs off hosts above 75% CPU for 5 minutes
  kestrel.virt.cluster:
    name: production
    scheduling_policy: evenly_distributed
    scheduling_policy_properties:
      high_utilization: 75
      cpu_overcommit_duration_minutes: 5

- name: Remove an empty cluster
  kestrel.virt.cluster:
    name: demo
    state: absent
"""

RETURN = r"""
cluster:
  description: The cluster after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    id:
      description: Engine identifier.
      type: str
      sample: 0c9b4e9e-3d1b-4a4e-9a57-2f1f8e0f6a11
    name:
      description: Name of the cluster.
      type: str
      sample: demo
    description:
      description: Free text.
      type: str
      sample: nested test lab
    virt_type:
      description: V(kvm) or V(qemu).
      type: str
      sample: qemu
    memory_overcommit:
      description: Memory the scheduler may hand out, in percent of a host's memory.
      type: int
      sample: 100
    mac_pool:
      description: MAC address ranges.
      type: list
      elements: str
      sample: ["56:6f:4b:00:00:00-56:6f:4b:ff:ff:ff"]
    scheduling_policy:
      description: Name of the cluster's scheduling policy.
      type: str
      sample: evenly_distributed
    scheduling_policy_properties:
      description: The parameter values the cluster sets (the others are the policy's defaults).
      type: dict
      sample: {high_utilization: 75}
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            description=dict(type='str'),
            virt_type=dict(type='str', choices=['kvm', 'qemu']),
            memory_overcommit=dict(type='int'),
            mac_pool=dict(type='list', elements='str'),
            scheduling_policy=dict(type='str', choices=['none', 'evenly_distributed', 'power_saving',
                                                        'vm_evenly_distributed', 'cluster_maintenance']),
            scheduling_policy_properties=dict(type='dict'),
        ),
        entity_key='cluster',
    )
    p = module.params
    if p['state'] == 'absent':
        module.apply(lambda engine, check_mode: engine.clusters.remove(p['name'], check_mode=check_mode))
    else:
        module.apply(lambda engine, check_mode: engine.clusters.ensure(
            p['name'], description=p['description'], virt_type=p['virt_type'],
            memory_overcommit=p['memory_overcommit'], mac_pool=p['mac_pool'],
            scheduling_policy=p['scheduling_policy'],
            scheduling_policy_properties=p['scheduling_policy_properties'], check_mode=check_mode))


if __name__ == '__main__':
    main()
