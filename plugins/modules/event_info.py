#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: event_info
short_description: Read the kestrel engine's audit log
version_added: 0.1.0
description:
  - Every status transition and change the engine makes is recorded in its
    audit log - a VM scheduled on a host, started, Down with its reason; a
    host Connecting, NonResponsive, Up again. This module reads it.
  - Entries come oldest first; O(after_id) follows the log from a known entry.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  entity_type:
    description: Only entries about this kind of entity.
    type: str
    choices: [cluster, host, vm, storage]
  entity_name:
    description: Only entries about the entity with this name.
    type: str
  severity:
    description: Only entries of this severity.
    type: str
    choices: [info, warning, error]
  user:
    description:
      - Only entries of what this user did - an API user's name, V(engine) for the
        engine loop, or V(local:<login>) for a module or command run on the engine host
        itself (which opens the engine's database).
    type: str
  after_id:
    description: Only entries newer than the entry with this id.
    type: int
    default: 0
  limit:
    description: At most this many entries, the newest ones.
    type: int
    default: 100
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
- name: Why did vm1 stop?
  kestrel.virt.event_info:
    entity_type: vm
    entity_name: vm1
    limit: 10
  register: result

- name: What did alice change through the API today?
  kestrel.virt.event_info:
    user: alice
  register: alice_did

- name: Show it
  ansible.builtin.debug:
    msg: "{{ result.events | map(attribute='message') | list }}"
"""

RETURN = r"""
events:
  description: Audit log entries, oldest first.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Entry number, increasing.
      type: int
      sample: 42
    time:
      description: When it happened (ISO 8601).
      type: str
      sample: "2026-11-21T16:05:12.123456+00:00"
    severity:
      description: V(info), V(warning) or V(error).
      type: str
      sample: info
    entity_type:
      description: V(cluster), V(host) or V(vm).
      type: str
      sample: vm
    entity_name:
      description: Name of the entity.
      type: str
      sample: vm1
    message:
      description: What happened, and why.
      type: str
      sample: "VM is Down: not running on host h1"
    user:
      description:
        - Who acted - an API user's name, V(engine) for the engine loop, V(local:<login>)
          for a caller on the engine host; empty for entries older than users.
      type: str
      sample: alice
    token_id:
      description: The id of the API token the user acted with; empty when none.
      type: str
      sample: "3f2a9c1e7b5d4a60"
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            entity_type=dict(type='str', choices=['cluster', 'host', 'vm', 'storage']),
            entity_name=dict(type='str'),
            severity=dict(type='str', choices=['info', 'warning', 'error']),
            user=dict(type='str'),
            after_id=dict(type='int', default=0),
            limit=dict(type='int', default=100),
        ),
    )
    p = module.params
    module.query('events', lambda engine: engine.events.info(
        entity_type=p['entity_type'], entity_name=p['entity_name'], severity=p['severity'],
        user=p['user'], after_id=p['after_id'], limit=p['limit']))


if __name__ == '__main__':
    main()
