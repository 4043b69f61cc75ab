#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: template
short_description: Create and remove kestrel VM templates and their versions
version_added: 0.1.0
description:
  - A template version holds VM settings and read-only disk volumes that VMs are
    made from (M(kestrel.virt.vm) with O(kestrel.virt.vm#module:template)), thin
    (a qcow2 overlay on the template's volume) or cloned (a copy).
  - From a stopped VM (O(vm)) each disk is copied by a host of the VM's cluster
    into a new read-only volume on the same storage domain, its backing chain
    flattened, and the VM's settings become the template's (memory, CPUs, machine,
    firmware, devices, disks' settings, NICs without their MAC addresses, custom
    properties, high availability). Its cloud-init, placement and tags are the
    VM's own and are not copied. A VM that is not Down is refused.
  - From a snapshot of a VM (O(vm) and O(snapshot_id)) the settings are the VM's
    when the snapshot was taken and each disk is the volume the snapshot froze,
    copied with the volumes below it flattened. The VM may be running; the
    snapshot is locked while its disks are copied (no merge or revert meanwhile).
  - From a floating disk (O(disk), for example an image uploaded with
    M(kestrel.virt.disk) and O(kestrel.virt.disk#module:upload_image_path)) the
    disk's volume becomes the template's as it is (no copy); it turns read-only
    and is no longer a floating disk. The template's settings are then the
    options O(memory), O(cpu_cores) and so on, on the defaults of a new VM.
  - Versions share the template's name (as oVirt's sub-versions); a version is
    found by O(version.number), else by O(version.name), else any version of the
    template will do. A missing version is created with the next number. A VM takes
    the latest version unless it names one.
  - While its disks are copied a version is C(locked); a second creation of the
    same version is refused. A copy that fails removes what it made, so no half
    template is left.
  - O(state=absent) removes a version (O(version)) or every version with their
    volumes; it is refused, naming them, while thin VMs depend on a version's
    volumes. VMs cloned from it are independent and stay.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Name of the template.
    type: str
    required: true
  state:
    description: Whether the template version exists.
    type: str
    choices: [present, absent]
    default: present
  vm:
    description:
      - Name of the stopped VM to make a new version from (any VM with O(snapshot_id)).
        Mutually exclusive with O(disk).
    type: str
  snapshot_id:
    description:
      - Make the new version from this snapshot of O(vm) (see M(kestrel.virt.snapshot_info))
        instead of the VM's disks as they are.
    type: str
  disk:
    description:
      - Name of a floating disk whose volume becomes the new version's disk.
    type: str
  cluster:
    description:
      - Cluster of the template. Required with O(disk); with O(vm) it is the VM's.
    type: str
  description:
    description: Free text shown to people; can be changed on an existing version.
    type: str
  version:
    description: Which version of the template this task is about.
    type: dict
    suboptions:
      number:
        description:
          - Version number; a new version must be the next number (the latest plus one).
        type: int
      name:
        description: Name of the version.
        type: str
  seal:
    description:
      - Run C(virt-sysprep) on the new version's boot disk (the first disk) after it
        is copied, erasing machine-specific configuration (SSH host keys, machine id,
        logs, ...), so VMs made from it do not inherit it.
    type: bool
    default: false
  memory:
    description: Memory of a template made from O(disk), with a unit (V(2GiB)).
    type: str
  cpu_cores:
    description: Cores per socket of a template made from O(disk).
    type: int
  cpu_sockets:
    description: Sockets of a template made from O(disk).
    type: int
  cpu_threads:
    description: Threads per core of a template made from O(disk).
    type: int
  machine:
    description: Machine type of a template made from O(disk).
    type: str
    choices: [pc, q35]
  nics:
    description: NICs of a template made from O(disk) (their MACs come from each VM's pool).
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the NIC.
        type: str
        required: true
      network:
        description: Logical network (or bridge) of the NIC.
        type: str
        required: true
      model:
        description: NIC model.
        type: str
        choices: [virtio, e1000, e1000e, rtl8139]
  custom_properties:
    description: Custom properties of a template made from O(disk).
    type: dict
  timeout:
    description: Seconds to wait for each disk copy; unset waits for as long as it takes.
    type: int
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
- name: A template from the stopped VM golden, sealed
  kestrel.virt.template:
    name: debian12
    vm: golden
    seal: true

- name: A second version of it, after golden changed
  kestrel.virt.template:
    name: debian12
    vm: golden
    version:
      number: 2
      name: with-updates

- name: A template from a snapshot of the running VM web1
  kestrel.virt.template:
    name: web-before-upgrade
    vm: web1
    snapshot_id: 3a0c7a4e-86b1-4f5d-9a1e-0c2b5d7e9f10

- name: A template straight from an uploaded image
  kestrel.virt.template:
    name: cloud
    disk: debian-12-genericcloud
    cluster: prod
    memory: 2GiB
    cpu_cores: 2
    nics:
      - name: nic1
        network: ovirtmgmt

- name: Remove version 1 (refused while thin VMs use it)
  kestrel.virt.template:
    name: debian12
    version:
      number: 1
    state: absent
"""

RETURN = r"""
template:
  description: The template version after the task (predicted in check mode); null after O(state=absent).
  returned: always
  type: dict
  contains:
    id:
      description: Engine identifier of the version.
      type: str
    name:
      description: Name of the template.
      type: str
      sample: debian12
    version:
      description: C(number) and C(name) of the version.
      type: dict
      sample: {number: 2, name: with-updates}
    status:
      description: V(ok), V(locked) while its disks are copied, V(illegal) when a failed copy could not be cleaned up.
      type: str
      sample: ok
    sealed:
      description: Whether C(virt-sysprep) ran on it.
      type: bool
    cluster:
      description: Cluster of the template.
      type: str
    memory_mib:
      description: Memory VMs made from it inherit, in MiB.
      type: int
      sample: 2048
    disks:
      description: Its disks (C(name), C(volume_id), C(storage_domain), C(size_mib), C(format), ...).
      type: list
      elements: dict
    vms:
      description: VMs made from this version.
      type: list
      elements: str
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule, drop_unset

DISK_SETTINGS = ('memory', 'machine', 'nics', 'custom_properties')


def settings(params):
    """The settings of a template made from a disk, as a VM spec names them."""
    out = drop_unset(dict((key, params[key]) for key in DISK_SETTINGS))
    cpu = drop_unset(dict(sockets=params['cpu_sockets'], cores=params['cpu_cores'],
                          threads=params['cpu_threads']))
    if cpu:
        out['cpu'] = cpu
    return out


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            vm=dict(type='str'),
            snapshot_id=dict(type='str'),
            disk=dict(type='str'),
            cluster=dict(type='str'),
            description=dict(type='str'),
            version=dict(type='dict', options=dict(
                number=dict(type='int'),
                name=dict(type='str'),
            )),
            seal=dict(type='bool', default=False),
            memory=dict(type='str'),
            cpu_cores=dict(type='int'),
            cpu_sockets=dict(type='int'),
            cpu_threads=dict(type='int'),
            machine=dict(type='str', choices=['pc', 'q35']),
            nics=dict(type='list', elements='dict', options=dict(
                name=dict(type='str', required=True),
                network=dict(type='str', required=True),
                model=dict(type='str', choices=['virtio', 'e1000', 'e1000e', 'rtl8139']),
            )),
            custom_properties=dict(type='dict'),
            timeout=dict(type='int'),
        ),
        entity_key='template',
        mutually_exclusive=[('vm', 'disk')],
        required_by=dict(snapshot_id='vm'),
    )
    p = module.params
    module.apply(lambda engine, check_mode: engine.templates.ensure(
        p['name'], state=p['state'], vm=p['vm'], disk=p['disk'], cluster=p['cluster'],
        version=drop_unset(p['version']), seal=p['seal'], description=p['description'],
        settings=settings(p) or None, snapshot_id=p['snapshot_id'], timeout=p['timeout'],
        check_mode=check_mode))


if __name__ == '__main__':
    main()
