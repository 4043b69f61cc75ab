#!/usr/bin/python
# -*- coding: utf-8 -*-

# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: snapshot_info
short_description: List a kestrel VM's snapshots
version_added: 0.1.0
description:
  - Returns the VM's snapshots, oldest first, as M(kestrel.virt.snapshot) returns one.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  vm_name:
    description: Name of the VM.
    type: str
    required: true
  snapshot_id:
    description: Only the snapshot with this id.
    type: str
  description:
    description: Only the snapshots with exactly this description.
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
- name: The snapshots of vm1 taken before upgrades
  kestrel.virt.snapshot_info:
    vm_name: vm1
    description: before upgrade
  register: found
"""

RETURN = r"""
snapshots:
  description: The snapshots, oldest first (see M(kestrel.virt.snapshot) for the fields).
  returned: always
  type: list
  elements: dict
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            vm_name=dict(type='str', required=True),
            snapshot_id=dict(type='str'),
            description=dict(type='str'),
        ),
    )
    p = module.params
    module.query('snapshots', lambda engine: engine.snapshots.info(
        p['vm_name'], snapshot_id=p['snapshot_id'] or '', description=p['description'] or ''))


if __name__ == '__main__':
    main()
