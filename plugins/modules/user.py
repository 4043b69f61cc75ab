#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: user
short_description: Manage the kestrel engine's local users
version_added: 0.1.0
description:
  - A user logs in to the engine API with a password (or uses its API tokens,
    M(kestrel.virt.token)) and may do what its permissions
    (M(kestrel.virt.permission)) and those of its groups allow.
  - Passwords are stored as argon2id hashes; neither a password nor its hash
    is ever returned, logged or shown in a diff.
  - Options left unset keep their current value.
  - Managing users needs the C(access.manage) permission on the system.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: The user's login name.
    type: str
    required: true
  state:
    description: Whether the user exists. Removing a user revokes its tokens and drops its permissions.
    type: str
    choices: [present, absent]
    default: present
  user_password:
    description:
      - The user's password, at least 12 characters.
      - Set on creation; on an existing user only with O(update_password=always).
      - Not named C(password) - that is the password the module itself logs in
        with (O(password)), which C(module_defaults) may set for every module.
    type: str
  update_password:
    description:
      - V(on_create) sets O(user_password) only for a new user, so the task stays
        idempotent (the engine cannot tell a changed password from the same
        one without setting it); V(always) sets it every run, reported as a change.
    type: str
    choices: [always, on_create]
    default: on_create
  description:
    description: Free text about the user.
    type: str
  email:
    description: The user's e-mail address.
    type: str
  enabled:
    description: Whether the user may log in and its tokens work. A disabled user's tokens stop at once.
    type: bool
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
- name: An operator account
  kestrel.virt.user:
    name: alice
    user_password: "{{ vault_alice_password }}"
    email: alice@example.com

- name: Let alice operate the VMs of the production cluster
  kestrel.virt.permission:
    role: VmOperator
    user_name: alice
    object_type: cluster
    object_name: production

- name: Lock the account (its tokens stop working too)
  kestrel.virt.user:
    name: alice
    enabled: false
"""

RETURN = r"""
user:
  description: The user after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    id:
      description: The user's id.
      type: str
    name:
      description: The login name.
      type: str
      sample: alice
    description:
      description: Free text.
      type: str
    email:
      description: E-mail address.
      type: str
      sample: alice@example.com
    enabled:
      description: Whether the user may log in.
      type: bool
      sample: true
    created:
      description: When the user was created (ISO 8601).
      type: str
    groups:
      description: The groups the user belongs to.
      type: list
      elements: str
      sample: [operators]
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            user_password=dict(type='str', no_log=True),
            update_password=dict(type='str', choices=['always', 'on_create'], default='on_create',
                                 no_log=False),
            description=dict(type='str'),
            email=dict(type='str'),
            enabled=dict(type='bool'),
        ),
        entity_key='user',
    )
    p = module.params
    if p['state'] == 'absent':
        module.apply(lambda engine, check_mode: engine.users.remove(
            p['name'], check_mode=check_mode))
    else:
        module.apply(lambda engine, check_mode: engine.users.ensure(
            p['name'], password=p['user_password'], update_password=p['update_password'],
            description=p['description'], email=p['email'], enabled=p['enabled'],
            check_mode=check_mode))


if __name__ == '__main__':
    main()
