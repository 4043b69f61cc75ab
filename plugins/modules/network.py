#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: network
short_description: Manage logical networks of a kestrel cluster
version_added: 0.1.0
description:
  - A logical network is a named network of a cluster that hosts provide as a
    Linux bridge, as in oVirt. VM NICs attach to it by name
    (O(kestrel.virt.vm#module:nics[].network), M(kestrel.virt.nic)).
  - A cluster without logical networks treats a NIC's network as the bridge
    name itself. Once a cluster defines any network, every new or changed NIC
    must name one of its networks.
  - A O(required) network's bridge must exist on a host (as the host's agent
    reports it) for VMs of the cluster to be scheduled there.
  - O(vlan) and O(mtu) describe how the hosts build the bridge; the VM NIC is
    plugged into the bridge untagged.
  - Options left unset keep their current value.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Name of the network, unique within its cluster.
    type: str
    required: true
  cluster:
    description: Cluster the network belongs to.
    type: str
    required: true
  state:
    description:
      - Whether the network exists. A network still used by a VM NIC cannot be removed.
    type: str
    choices: [present, absent]
    default: present
  bridge:
    description:
      - The bridge on the hosts that carries the network (at most 15 characters).
      - A new network's bridge defaults to its O(name). Changing it moves every
        NIC on the network to the new bridge (running VMs at their next start).
    type: str
  vlan:
    description: VLAN ID of the network on the hosts (1-4094); V(0) for untagged.
    type: int
  mtu:
    description: MTU of the network on the hosts (68-65535); V(0) for the default.
    type: int
  required:
    description: Whether every host that runs VMs of the cluster must have the network's bridge.
    type: bool
  description:
    description: Free text.
    type: str
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
- name: The cluster's VM network on bridge br-vm, VLAN 100, required on every host
  kestrel.virt.network:
    name: vms
    cluster: production
    bridge: br-vm
    vlan: 100
    mtu: 9000
    required: true

- name: A NIC on it
  kestrel.virt.nic:
    vm: web1
    name: nic1
    network: vms

- name: Remove a network no NIC uses any more
  kestrel.virt.network:
    name: legacy
    cluster: production
    state: absent
"""

RETURN = r"""
network:
  description: The network after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    name:
      description: Name of the network.
      type: str
      sample: vms
    cluster:
      description: Cluster of the network.
      type: str
      sample: production
    bridge:
      description: Bridge on the hosts.
      type: str
      sample: br-vm
    vlan:
      description: VLAN ID, null when untagged.
      type: int
      sample: 100
    mtu:
      description: MTU, null for the default.
      type: int
      sample: 9000
    required:
      description: Whether hosts must have it to run the cluster's VMs.
      type: bool
      sample: true
    description:
      description: Free text.
      type: str
      sample: ""
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            cluster=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            bridge=dict(type='str'),
            vlan=dict(type='int'),
            mtu=dict(type='int'),
            required=dict(type='bool'),
            description=dict(type='str'),
        ),
        entity_key='network',
    )
    p = module.params
    if p['state'] == 'absent':
        module.apply(lambda engine, check_mode: engine.networks.remove(
            p['name'], cluster=p['cluster'], check_mode=check_mode))
    else:
        module.apply(lambda engine, check_mode: engine.networks.ensure(
            p['name'], cluster=p['cluster'], bridge=p['bridge'], vlan=p['vlan'], mtu=p['mtu'],
            required=p['required'], description=p['description'], check_mode=check_mode))


if __name__ == '__main__':
    main()
