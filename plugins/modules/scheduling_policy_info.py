#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: scheduling_policy_info
short_description: Read the scheduling policies a kestrel cluster can use
version_added: 0.1.0
description:
  - Lists the scheduling policies of the kestrel engine, as in oVirt, each a list of
    filters, weights with their factors, a balancer and parameters.
  - With O(cluster), returns the cluster's policy with the parameter values it sets.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Return only this policy.
    type: str
    choices: [none, evenly_distributed, power_saving, vm_evenly_distributed, cluster_maintenance]
  cluster:
    description: Return the policy this cluster uses, with the cluster's parameter values.
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
- name: Every policy
  kestrel.virt.scheduling_policy_info:
  register: policies

- name: What the production cluster schedules with
  kestrel.virt.scheduling_policy_info:
    cluster: production
  register: production_policy
"""

RETURN = r"""
scheduling_policies:
  description: The policies asked for.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Policy name.
      type: str
      sample: evenly_distributed
    description:
      description: What the policy does.
      type: str
    filters:
      description: Filters in the order they run; a host failing one cannot run the VM.
      type: list
      elements: str
      sample: [status, pinned_hosts, migration, cpu, memory]
    weights:
      description: Weight units and their factors; each unit is normalized to [0, 1] first.
      type: list
      elements: dict
      sample: [{name: cpu_even, factor: 1.0}]
    balancer:
      description: The balancer proposing migrations; null when the policy does not balance.
      type: str
      sample: evenly_distributed
    parameters:
      description: Parameters with their value, default and allowed range.
      type: list
      elements: dict
      sample: [{name: high_utilization, value: 80, default: 80, minimum: 1, maximum: 100}]
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', choices=['none', 'evenly_distributed', 'power_saving',
                                           'vm_evenly_distributed', 'cluster_maintenance']),
            cluster=dict(type='str'),
        ),
        mutually_exclusive=[('name', 'cluster')],
    )
    p = module.params
    module.query('scheduling_policies', lambda engine: engine.clusters.scheduling_policies(
        name=p['name'], cluster=p['cluster']))


if __name__ == '__main__':
    main()
