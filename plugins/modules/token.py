#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: token
short_description: Create and revoke kestrel engine API tokens
version_added: 0.1.0
description:
  - An API token lets a job (an AWX credential, O(kestrel.virt.token#module:token)
    of every module) act as its user without a password. It can never do more
    than its user may, and with O(role) no more than that role allows either.
  - The token text is returned once, when the token is created; register it
    and store it somewhere safe. The engine keeps only a digest of it.
  - Set C(no_log) on the task - a module cannot hide its own result from the
    callbacks (the terminal with C(-v), AWX job output), and the text is a
    credential.
  - Idempotent on O(name) - an existing token is neither created again nor
    shown again; revoke it (O(state=absent)) and create a new one to replace it.
  - Your own tokens need only a login; another user's need the
    C(access.manage) permission on the system.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Name of the token, unique for its user.
    type: str
    required: true
  user:
    description: The user the token acts as; the caller's own user if not set.
    type: str
  role:
    description:
      - Narrows the token to this built-in role (for example C(VmOperator)) -
        it may do only what both its user and the role allow.
      - Without it, the token may do whatever its user may.
    type: str
  expires_in:
    description: Seconds until the token expires. Without it (or O(expires)) it does not expire.
    type: int
  expires:
    description: When the token expires, ISO 8601 (C(2027-01-31T00:00:00Z)).
    type: str
  state:
    description: V(present) creates the token if it does not exist; V(absent) revokes it at once.
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
- name: A token for the nightly AWX job, limited to operating VMs
  kestrel.virt.token:
    name: awx-nightly
    user: ci
    role: VmOperator
    expires_in: 7776000
  register: nightly
  no_log: true

- name: Keep it in the vault (it is shown only now)
  ansible.builtin.copy:
    content: "{{ nightly.token.token }}"
    dest: /root/awx-nightly.token
    mode: "0600"
  when: nightly.changed
  no_log: true

- name: Revoke it
  kestrel.virt.token:
    name: awx-nightly
    user: ci
    state: absent
"""

RETURN = r"""
token:
  description: The token after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    token:
      description: The token text (C(kst_...)), to pass as O(kestrel.virt.vm#module:token).
      returned: only when the task created the token (not in check mode)
      type: str
    id:
      description: The token's id.
      type: str
    name:
      description: Name of the token.
      type: str
      sample: awx-nightly
    user:
      description: The user the token acts as.
      type: str
      sample: ci
    role:
      description: The role narrowing the token; empty when none.
      type: str
      sample: VmOperator
    expires:
      description: When it expires (ISO 8601); null when never.
      type: str
    revoked:
      description: Whether it was revoked.
      type: bool
    created:
      description: When it was created (ISO 8601).
      type: str
    last_used:
      description: When it last authenticated a request (to the minute); null when never.
      type: str
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def create(module, engine, check_mode):
    p = module.params
    optional = dict((key, p[key]) for key in ('role', 'expires_in', 'expires') if p[key] is not None)
    outcome = engine.tokens.create(name=p['name'], user=p['user'], check_mode=check_mode, **optional)
    if check_mode and outcome.entity:
        # A predicted token's text was never stored: it would never work.
        outcome.entity.pop('token', None)
    return outcome


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            user=dict(type='str'),
            role=dict(type='str'),
            expires_in=dict(type='int'),
            expires=dict(type='str'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
        ),
        entity_key='token',
        mutually_exclusive=[('expires_in', 'expires')],
    )
    p = module.params
    if p['expires_in'] is not None and p['expires_in'] <= 0:
        module.fail_json(msg='expires_in: must be a positive number of seconds')
    if p['state'] == 'absent':
        module.apply(lambda engine, check_mode: engine.tokens.revoke(
            name=p['name'], user=p['user'], check_mode=check_mode))
    else:
        module.apply(lambda engine, check_mode: create(module, engine, check_mode))


if __name__ == '__main__':
    main()
