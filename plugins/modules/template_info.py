#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: template_info
short_description: Read kestrel VM templates and their versions
version_added: 0.1.0
description:
  - List template versions with their settings, disks, status and the VMs made from them.
  - Without filters every version of every template is returned.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Only the versions of this template.
    type: str
  version:
    description: Only this version number.
    type: int
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
- name: The versions of debian12
  kestrel.virt.template_info:
    name: debian12
  register: result

- name: The latest one
  ansible.builtin.debug:
    msg: "{{ result.templates | map(attribute='version.number') | max }}"
"""

RETURN = r"""
templates:
  description: The template versions that match, by name and version number; see M(kestrel.virt.template).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name of the template.
      type: str
      sample: debian12
    version:
      description: C(number) and C(name) of the version.
      type: dict
      sample: {number: 1, name: ""}
    status:
      description: V(ok), V(locked) or V(illegal).
      type: str
      sample: ok
    disks:
      description: Its disks with their volumes.
      type: list
      elements: dict
    vms:
      description: VMs made from this version.
      type: list
      elements: str
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str'),
            version=dict(type='int'),
        ),
    )
    p = module.params
    module.query('templates', lambda engine: engine.templates.info(name=p['name'],
                                                                   version=p['version']))


if __name__ == '__main__':
    main()
