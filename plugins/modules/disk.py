#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: disk
short_description: Create, attach, grow, detach and remove one disk of a kestrel VM
version_added: 0.1.0
description:
  - Manages one disk of a VM by name, leaving the VM's other disks alone
    (M(kestrel.virt.vm) refuses to drop a disk from its list, because that
    would lose data; this module is how a disk goes).
  - O(state=present) creates a new volume on O(storage_domain), or attaches an
    existing volume given by O(volume) (for example one detached before).
    A new volume is made on storage at the VM's first start (or at hotplug). Once
    the disk has run, or for an attached volume, a start that finds the volume
    missing (a storage domain not mounted, a removal half done) fails naming the
    disk; it never boots the VM from a blank disk in its place.
  - O(state=detached) removes the disk from the VM and keeps its volume; the
    result names the volume so it can be attached again.
    O(state=absent) removes the disk and deletes its volume.
  - On a running VM a new or attached disk is hotplugged, and a detached or
    removed one unplugged, through the agent of the VM's host (C(hotplugged=true)).
  - O(size) can only grow. A running VM's disk grows live (libvirt's block
    resize on its host; the guest sees the new size at once); a stopped VM's
    volume is grown by a host of its cluster (C(qemu-img resize)).
  - Other changes to a running VM's disk are stored for its next start
    (C(next_run=true), the domain XML in C(--diff)).
  - Options left unset keep their current value.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  vm:
    description: Name of the VM.
    type: str
    required: true
  name:
    description: Name of the disk within the VM.
    type: str
    required: true
  state:
    description: Whether the disk is on the VM, detached from it (volume kept), or gone with its volume.
    type: str
    choices: [present, detached, absent]
    default: present
  volume:
    description: An existing volume to attach, as a detached disk's result names it.
    type: dict
    suboptions:
      image_id:
        description: Image id of the volume.
        type: str
        required: true
      volume_id:
        description: Volume id.
        type: str
        required: true
extends_documentation_fragment:
  - kestrel.virt.disk
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
- name: A 10 GiB data disk, hotplugged if db1 runs
  kestrel.virt.disk:
    vm: db1
    name: data
    size: 10GiB
    storage_domain: data

- name: Grow it (live if db1 runs)
  kestrel.virt.disk:
    vm: db1
    name: data
    size: 20GiB

- name: Detach it, keeping the volume
  kestrel.virt.disk:
    vm: db1
    name: data
    state: detached
  register: detached

- name: Attach the same volume to another VM
  kestrel.virt.disk:
    vm: db2
    name: data
    size: 20GiB
    storage_domain: data
    volume:
      image_id: "{{ detached.disk.image_id }}"
      volume_id: "{{ detached.disk.volume_id }}"
"""

RETURN = r"""
disk:
  description:
    - The disk after the task (predicted in check mode). After O(state=detached), the
      volume it leaves (C(storage_domain), C(image_id), C(volume_id), C(size_mib)); after
      O(state=absent) only C(vm) and C(name).
  returned: always
  type: dict
  contains:
    vm:
      description: Name of the VM.
      type: str
      sample: db1
    name:
      description: Name of the disk.
      type: str
      sample: data
    id:
      description: Device id; the domain XML alias is C(ua-<id>).
      type: str
      sample: 3687b9b7-3c40-45b4-b891-7f31885bef31
    size_mib:
      description: Size in MiB.
      type: int
      sample: 10240
    storage_domain:
      description: Storage domain of the volume.
      type: str
      sample: data
    image_id:
      description: Image id of the volume.
      type: str
      sample: f16f3d47-c5a4-4619-9a1e-eef1a7ec3848
    volume_id:
      description: Volume id.
      type: str
      sample: 3a9254fd-849e-434e-b2e0-ec6cf698d52c
    hotplugged:
      description: Whether the change was applied to the running VM through its agent.
      type: bool
      sample: false
    next_run:
      description: Whether the VM runs with an older configuration until its next start.
      type: bool
      sample: false
"""

from ansible_collections.kestrel.virt.plugins.module_utils._args_common import DISK_ARG_SPEC
from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule, drop_unset

SETTINGS = tuple(DISK_ARG_SPEC)


def main():
    module = KestrelModule(
        argument_spec=dict(
            vm=dict(type='str', required=True),
            name=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'detached', 'absent'], default='present'),
            volume=dict(type='dict', options=dict(
                image_id=dict(type='str', required=True),
                volume_id=dict(type='str', required=True),
            )),
            **DISK_ARG_SPEC
        ),
        entity_key='disk',
        mutually_exclusive=[('lun', 'storage_domain'), ('lun', 'size'), ('lun', 'volume')],
    )
    p = module.params
    settings = drop_unset(dict((key, p[key]) for key in SETTINGS))
    module.apply(lambda engine, check_mode: engine.vm_devices.disk(
        p['vm'], p['name'], state=p['state'], settings=settings, volume=p['volume'],
        check_mode=check_mode))


if __name__ == '__main__':
    main()
