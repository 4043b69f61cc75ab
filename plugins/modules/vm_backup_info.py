#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_backup_info
short_description: List a kestrel VM's backups (restore points)
version_added: 0.1.0
description:
  - The backups of O(vm_name) (every VM's without it), oldest first, including
    those of VMs removed since: a VM's backups outlive it.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  vm_name:
    description: Only this VM's backups.
    type: str
    default: ""
  backup_id:
    description: Only this backup.
    type: str
    default: ""
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
- name: The restore points of web1
  kestrel.virt.vm_backup_info:
    vm_name: web1
  register: result

- name: The newest one
  ansible.builtin.debug:
    msg: "{{ (result.backups | selectattr('status', 'equalto', 'succeeded') | last).id }}"
"""

RETURN = r"""
backups:
  description: The backups, oldest first, as M(kestrel.virt.vm_backup) returns one.
  returned: always
  type: list
  elements: dict
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            vm_name=dict(type='str', default=''),
            backup_id=dict(type='str', default=''),
        ),
    )
    p = module.params
    module.query('backups', lambda engine: engine.backups.info(vm_name=p['vm_name'],
                                                               backup_id=p['backup_id']))


if __name__ == '__main__':
    main()
