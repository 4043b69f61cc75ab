#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: affinity_group
short_description: Manage kestrel affinity groups
version_added: 0.1.0
description:
  - An affinity group keeps its VMs together or apart, or on or off some hosts,
    as oVirt's affinity groups do.
  - A VM joins a group through O(kestrel.virt.vm#module:placement.affinity_groups).
  - An enforcing rule is a scheduler filter (a VM does not start where it would
    break it, and the failure says which group); a non-enforcing rule is a
    weight the scheduler prefers to honour.
  - Options left unset keep their current value.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Name of the group, unique within its cluster.
    type: str
    required: true
  cluster:
    description: Cluster the group belongs to.
    type: str
    required: true
  state:
    description: Whether the group exists.
    type: str
    choices: [present, absent]
    default: present
  vm_rule:
    description:
      - V(positive) runs the member VMs on the same host, V(negative) on
        different hosts, V(disabled) ignores the VM rule. A new group starts disabled.
    type: str
    choices: [positive, negative, disabled]
  vm_enforcing:
    description: Whether the VM rule is a hard filter (V(true), the default for a new group) or a preference.
    type: bool
  host_rule:
    description:
      - V(positive) runs the member VMs only on O(hosts), V(negative) never on
        them, V(disabled) ignores the host rule. A new group starts disabled.
    type: str
    choices: [positive, negative, disabled]
  host_enforcing:
    description: Whether the host rule is a hard filter (V(true), the default for a new group) or a preference.
    type: bool
  hosts:
    description: Hosts of the cluster the host rule refers to.
    type: list
    elements: str
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
- name: Never run two database replicas on one host
  kestrel.virt.affinity_group:
    name: db-replicas
    cluster: production
    vm_rule: negative

- name: Keep the licensed VMs on the two licensed hosts, if at all possible
  kestrel.virt.affinity_group:
    name: licensed
    cluster: production
    host_rule: positive
    host_enforcing: false
    hosts: [h1, h2]

- name: A VM in both groups
  kestrel.virt.vm:
    name: db1
    cluster: production
    placement:
      affinity_groups: [db-replicas, licensed]
"""

RETURN = r"""
affinity_group:
  description: The group after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    name:
      description: Name of the group.
      type: str
      sample: db-replicas
    cluster:
      description: Cluster of the group.
      type: str
      sample: production
    vm_rule:
      description: V(positive), V(negative) or V(disabled).
      type: str
      sample: negative
    vm_enforcing:
      description: Whether the VM rule is a hard filter.
      type: bool
      sample: true
    host_rule:
      description: V(positive), V(negative) or V(disabled).
      type: str
      sample: disabled
    host_enforcing:
      description: Whether the host rule is a hard filter.
      type: bool
      sample: true
    hosts:
      description: Hosts the host rule refers to, sorted.
      type: list
      elements: str
      sample: [h1, h2]
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            cluster=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            vm_rule=dict(type='str', choices=['positive', 'negative', 'disabled']),
            vm_enforcing=dict(type='bool'),
            host_rule=dict(type='str', choices=['positive', 'negative', 'disabled']),
            host_enforcing=dict(type='bool'),
            hosts=dict(type='list', elements='str'),
        ),
        entity_key='affinity_group',
    )
    p = module.params
    if p['state'] == 'absent':
        module.apply(lambda engine, check_mode: engine.affinity_groups.remove(
            p['name'], cluster=p['cluster'], check_mode=check_mode))
    else:
        module.apply(lambda engine, check_mode: engine.affinity_groups.ensure(
            p['name'], cluster=p['cluster'], vm_rule=p['vm_rule'], vm_enforcing=p['vm_enforcing'],
            host_rule=p['host_rule'], host_enforcing=p['host_enforcing'], hosts=p['hosts'],
            check_mode=check_mode))


if __name__ == '__main__':
    main()
