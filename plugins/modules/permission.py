#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: permission
short_description: Grant roles to kestrel users and groups on objects
version_added: 0.1.0
description:
  - A permission gives a user or a group a role on the system, a cluster, a
    host, a VM or a template, as oVirt's ovirt_permission does. A role granted
    on the system applies to every object, one on a cluster to its hosts,
    VMs and templates.
  - The built-in roles are C(SuperUser), C(ClusterAdmin), C(HostAdmin),
    C(VmOperator), C(VmCreator), C(UserVmManager) (what a VM's creator gets on
    it) and C(ReadOnly); C(kestrel user list) shows their permissions.
  - Granting and removing permissions needs the C(access.manage) permission on the system.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  role:
    description: Name of the role.
    type: str
    required: true
  user_name:
    description: The user to grant the role to. Exactly one of O(user_name) and O(group_name).
    type: str
    aliases: [user]
  group_name:
    description: The group to grant the role to.
    type: str
    aliases: [group]
  object_type:
    description: The kind of object the role applies to.
    type: str
    choices: [system, cluster, host, vm, template]
    default: system
  object_name:
    description: The object's name; required unless O(object_type=system).
    type: str
  state:
    description: Whether the permission exists.
    type: str
    choices: [present, absent]
    default: present
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
- name: Bob may read everything
  kestrel.virt.permission:
    role: ReadOnly
    user_name: bob

- name: The operators run the VMs of the production cluster
  kestrel.virt.permission:
    role: VmOperator
    group_name: operators
    object_type: cluster
    object_name: production

- name: No longer
  kestrel.virt.permission:
    role: VmOperator
    group_name: operators
    object_type: cluster
    object_name: production
    state: absent
"""

RETURN = r"""
permission:
  description: The permission after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    id:
      description: The permission's id.
      type: str
    role:
      description: The role granted.
      type: str
      sample: VmOperator
    user:
      description: The user it is granted to (absent for a group's).
      type: str
    group:
      description: The group it is granted to (absent for a user's).
      type: str
      sample: operators
    object_type:
      description: V(system), V(cluster), V(host), V(vm) or V(template).
      type: str
      sample: cluster
    object_name:
      description: The object's name (empty for the system).
      type: str
      sample: production
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            role=dict(type='str', required=True),
            user_name=dict(type='str', aliases=['user']),
            group_name=dict(type='str', aliases=['group']),
            object_type=dict(type='str', choices=['system', 'cluster', 'host', 'vm', 'template'],
                             default='system'),
            object_name=dict(type='str'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
        ),
        entity_key='permission',
        mutually_exclusive=[('user_name', 'group_name')],
        required_one_of=[('user_name', 'group_name')],
        required_if=[('object_type', 'cluster', ['object_name']),
                     ('object_type', 'host', ['object_name']),
                     ('object_type', 'vm', ['object_name']),
                     ('object_type', 'template', ['object_name'])],
    )
    p = module.params
    if p['object_type'] == 'system' and p['object_name']:
        module.fail_json(msg='object_name: must be empty for object_type system')
    module.apply(lambda engine, check_mode: engine.permissions.ensure(
        role=p['role'], user=p['user_name'], group=p['group_name'],
        object_type=p['object_type'], object_name=p['object_name'] or '',
        state=p['state'], check_mode=check_mode))


if __name__ == '__main__':
    main()
