#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: group
short_description: Manage the kestrel engine's groups of users
version_added: 0.1.0
description:
  - A group's permissions (M(kestrel.virt.permission) with O(kestrel.virt.permission#module:group_name))
    apply to each of its members.
  - Options left unset keep their current value.
  - Managing groups needs the C(access.manage) permission on the system.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Name of the group.
    type: str
    required: true
  state:
    description: Whether the group exists. Removing a group drops its permissions, not its users.
    type: str
    choices: [present, absent]
    default: present
  users:
    description:
      - The group's members, by user name; the list replaces the current members.
      - Every user must exist (M(kestrel.virt.user)).
    type: list
    elements: str
  description:
    description: Free text about the group.
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
- name: The operators
  kestrel.virt.group:
    name: operators
    users: [alice, bob]

- name: Operators may run the production VMs
  kestrel.virt.permission:
    role: VmOperator
    group_name: operators
    object_type: cluster
    object_name: production
"""

RETURN = r"""
group:
  description: The group after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    id:
      description: The group's id.
      type: str
    name:
      description: Name of the group.
      type: str
      sample: operators
    description:
      description: Free text.
      type: str
    users:
      description: Member user names, sorted.
      type: list
      elements: str
      sample: [alice, bob]
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            users=dict(type='list', elements='str'),
            description=dict(type='str'),
        ),
        entity_key='group',
    )
    p = module.params
    if p['state'] == 'absent':
        module.apply(lambda engine, check_mode: engine.groups.remove(
            p['name'], check_mode=check_mode))
    else:
        module.apply(lambda engine, check_mode: engine.groups.ensure(
            p['name'], users=p['users'], description=p['description'], check_mode=check_mode))


if __name__ == '__main__':
    main()
