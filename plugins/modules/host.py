#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: host
short_description: Register hypervisor hosts with the kestrel engine
version_added: 0.1.0
description:
  - Add a host to a cluster, move or re-address it, or remove it.
  - The engine reaches the host's agent over mutual TLS before it records
    anything, so a host the engine cannot talk to is never registered. Deploy
    the agent first with the C(kestrel.virt.host) role.
  - In check mode the agent is contacted as well; only the database is left untouched.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Name of the host in the engine.
    type: str
    required: true
  state:
    description:
      - V(present) registers the host or updates its cluster, address and port.
      - V(absent) removes it; a host that still runs VMs is refused.
    type: str
    choices: [present, absent]
    default: present
  address:
    description:
      - Address the engine uses to reach the host's agent.
      - Required with O(state=present).
    type: str
  cluster:
    description:
      - Cluster the host belongs to. A host running VMs cannot change cluster.
      - Required with O(state=present).
    type: str
  port:
    description: TCP port of the agent's HTTPS API.
    type: int
    default: 54321
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
- name: Register h1
  kestrel.virt.host:
    name: h1
    address: 10.77.0.1
    cluster: demo

- name: Remove a host that runs no VMs
  kestrel.virt.host:
    name: h1
    state: absent
"""

RETURN = r"""
host:
  description: The host after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    id:
      description: Engine identifier.
      type: str
    name:
      description: Name of the host.
      type: str
      sample: h1
    cluster:
      description: Cluster of the host.
      type: str
      sample: demo
    address:
      description: Address of the agent.
      type: str
      sample: 10.77.0.1
    port:
      description: Port of the agent.
      type: int
      sample: 54321
    status:
      description: Host status as the engine last saw it.
      type: str
      sample: Up
    hostname:
      description: Host name the agent reported.
      type: str
    host_uuid:
      description: libvirt's host UUID.
      type: str
    cpus:
      description: Logical CPUs the host has.
      type: int
      sample: 2
    memory_mib:
      description: Physical memory of the host in MiB.
      type: int
      sample: 24000
    libvirt_version:
      description: libvirt version on the host.
      type: str
      sample: 9.0.0
    last_seen:
      description: When the engine last reached the agent (ISO 8601).
      type: str
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            address=dict(type='str'),
            cluster=dict(type='str'),
            port=dict(type='int', default=54321),
        ),
        required_if=[('state', 'present', ('address', 'cluster'))],
        entity_key='host',
    )
    p = module.params
    if p['state'] == 'absent':
        module.apply(lambda engine, check_mode: engine.hosts.remove(p['name'], check_mode=check_mode))
    else:
        module.apply(lambda engine, check_mode: engine.hosts.ensure(
            p['name'], address=p['address'], cluster=p['cluster'], port=p['port'],
            check_mode=check_mode))


if __name__ == '__main__':
    main()
