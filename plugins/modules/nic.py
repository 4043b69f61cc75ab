#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nic
short_description: Add, update and remove one network interface of a kestrel VM
version_added: 0.1.0
description:
  - Manages one NIC of a VM by name, leaving the VM's other NICs alone
    (M(kestrel.virt.vm) manages the whole list at once).
  - A NIC added to or removed from a running VM is hotplugged or unplugged
    through the agent of the VM's host; the result says C(hotplugged=true).
  - A change to an existing NIC of a running VM is stored and takes effect at
    the VM's next start; the result says C(next_run=true) and C(--diff) shows
    the domain XML before and after.
  - The MAC address comes from the cluster's MAC pool when the NIC is added
    and is kept on every later run.
  - Options left unset keep their current value.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  vm:
    description: Name of the VM.
    type: str
    required: true
  name:
    description: Name of the NIC within the VM.
    type: str
    required: true
  state:
    description: Whether the NIC exists.
    type: str
    choices: [present, absent]
    default: present
  network:
    description:
      - Logical network of the VM's cluster (M(kestrel.virt.network)), or the
        host bridge name in a cluster without logical networks. Required to add a NIC.
    type: str
extends_documentation_fragment:
  - kestrel.virt.nic
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
- name: A second NIC on the storage network, hotplugged if web1 runs
  kestrel.virt.nic:
    vm: web1
    name: storage
    network: storage
  register: nic

- name: Its MAC, stable from now on
  ansible.builtin.debug:
    msg: "{{ nic.nic.mac }}"

- name: Take its link down at the next start
  kestrel.virt.nic:
    vm: web1
    name: storage
    link_state: down

- name: Unplug it
  kestrel.virt.nic:
    vm: web1
    name: storage
    state: absent
"""

RETURN = r"""
nic:
  description: The NIC after the task (predicted in check mode); only C(vm) and C(name) when absent.
  returned: always
  type: dict
  contains:
    vm:
      description: Name of the VM.
      type: str
      sample: web1
    name:
      description: Name of the NIC.
      type: str
      sample: storage
    id:
      description: Device id; the domain XML alias is C(ua-<id>).
      type: str
      sample: 1b56bef0-1ed3-45dc-bab0-3cf8ab0ef70d
    mac:
      description: MAC address.
      type: str
      sample: 56:6f:4b:00:00:01
    network:
      description: Network of the NIC.
      type: str
      sample: storage
    hotplugged:
      description: Whether the change was applied to the running VM through its agent.
      type: bool
      sample: true
    next_run:
      description: Whether the VM runs with an older configuration until its next start.
      type: bool
      sample: false
"""

from ansible_collections.kestrel.virt.plugins.module_utils._args_common import NIC_ARG_SPEC
from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule, drop_unset

SETTINGS = ('network',) + tuple(NIC_ARG_SPEC)


def main():
    module = KestrelModule(
        argument_spec=dict(
            vm=dict(type='str', required=True),
            name=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            network=dict(type='str'),
            **NIC_ARG_SPEC
        ),
        entity_key='nic',
    )
    p = module.params
    settings = drop_unset(dict((key, p[key]) for key in SETTINGS))
    module.apply(lambda engine, check_mode: engine.vm_devices.nic(
        p['vm'], p['name'], state=p['state'], settings=settings, check_mode=check_mode))


if __name__ == '__main__':
    main()
