#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_backup
short_description: Back up a kestrel VM, remove a backup, or restore one
version_added: 0.1.0
description:
  - V(present) backs the VM up into qcow2 files (one per disk with a volume on a
    storage domain; LUNs and cdroms are not backed up) on O(storage_domain).
  - A running VM's backup goes through libvirt's backup API. O(mode=incremental)
    writes only the blocks changed since the VM's last backup (its checkpoint, a
    persistent dirty bitmap the engine keeps and redefines after a restart or a
    migration); each incremental file has the previous backup's file as backing,
    so every backup is a full restore point.
  - An incremental that cannot be made is made full and the result's
    C(fallback_reason) says why (no checkpoint yet, a disk changed chain since
    the checkpoint, for example after a snapshot, the bitmap is missing, the
    previous backup was removed or is on another storage domain, or the VM is
    stopped; a stopped VM's backup is a flattened copy of each disk).
  - V(absent) removes O(backup_id). When a later backup builds on it, the later
    backup's files are merged into it, so the restore points that remain are
    unchanged.
  - V(restored) copies the backup into a new VM O(restore_vm_name) (made with the
    VM's settings at backup time) or one of its disks into a new floating disk
    O(restore_disk_name).
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  vm_name:
    description: The VM to back up (O(state=present)).
    type: str
  backup_id:
    description:
      - The backup to remove or restore.
      - With O(state=present), an existing backup of that id is no change; without
        it every run makes a new backup (as M(kestrel.virt.snapshot) does).
    type: str
  mode:
    description: V(incremental) when it can be (else full, saying why), or V(full).
    type: str
    choices: [full, incremental]
    default: incremental
  storage_domain:
    description:
      - Storage domain the backup files go to; the host running the VM must reach it.
      - Empty, the domain of the VM's first disk.
      - With O(state=restored), the storage domain of the restored disks (empty,
        the backup's for a floating disk, each disk's original for a VM).
    type: str
    default: ""
  description:
    description: Description of the backup.
    type: str
    default: ""
  state:
    description: What to do.
    type: str
    choices: [present, absent, restored]
    default: present
  restore_vm_name:
    description: With O(state=restored), the name of the new VM.
    type: str
    default: ""
  restore_disk_name:
    description: With O(state=restored), the name of the new floating disk.
    type: str
    default: ""
  disk:
    description:
      - With O(restore_disk_name), which of the backup's disks to restore (by the
        VM's disk name); needed when the backup holds several.
    type: str
    default: ""
  wait:
    description:
      - Wait for the backup, removal or restore to finish. Only V(true) is
        supported; use the engine API's jobs to run one in the background.
    type: bool
    default: true
  timeout:
    description: Seconds the agent's backup job may take.
    type: int
    default: 3600
extends_documentation_fragment:
  - kestrel.virt.engine
  - kestrel.virt.engine.attributes
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Nightly backup of web1, incremental when it can be
  kestrel.virt.vm_backup:
    vm_name: web1
    storage_domain: backups
  register: nightly

- name: Say when it fell back to full
  ansible.builtin.debug:
    msg: "{{ nightly.backup.fallback_reason }}"
  when: nightly.backup.fallback_reason | length > 0

- name: Restore it into a new VM
  kestrel.virt.vm_backup:
    backup_id: "{{ nightly.backup.id }}"
    state: restored
    restore_vm_name: web1-restored

- name: Remove it
  kestrel.virt.vm_backup:
    backup_id: "{{ nightly.backup.id }}"
    state: absent
"""

RETURN = r"""
backup:
  description:
    - The backup (V(present), V(absent)); with V(restored) C(vm) (the new VM) or
      C(disk) (the new floating disk).
  returned: always
  type: dict
  contains:
    id:
      description: Id of the backup.
      type: str
    vm:
      description: Name of the VM backed up.
      type: str
    mode:
      description: V(full) or V(incremental), as made.
      type: str
    fallback_reason:
      description: Why an incremental was made full; empty otherwise.
      type: str
    checkpoint_id:
      description: The checkpoint this backup made (empty for a stopped VM's).
      type: str
    from_checkpoint_id:
      description: The checkpoint an incremental started from.
      type: str
    status:
      description: V(succeeded), V(failed) or V(running).
      type: str
    bytes_written:
      description: Bytes the backup wrote (near what the guest changed, for an incremental).
      type: int
    disks:
      description: Per disk, C(disk), C(image_id) and C(volume_id) of its backup file, C(bytes).
      type: list
      elements: dict
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def _call(p):
    def call(engine, check_mode):
        if p['state'] == 'absent':
            return engine.backups.remove(p['backup_id'], check_mode=check_mode)
        if p['state'] == 'restored':
            return engine.backups.restore(
                p['backup_id'], vm_name=p['restore_vm_name'], disk_name=p['restore_disk_name'],
                disk=p['disk'], storage_domain=p['storage_domain'], check_mode=check_mode)
        if p['backup_id']:
            found = engine.backups.info(backup_id=p['backup_id'])
            if found:
                return _Unchanged(found[0])
        return engine.backups.create(p['vm_name'], storage_domain=p['storage_domain'],
                                     mode=p['mode'], description=p['description'],
                                     timeout=p['timeout'], check_mode=check_mode)
    return call


class _Unchanged(object):
    def __init__(self, entity):
        self.changed, self.entity, self.diff = False, entity, None


def main():
    module = KestrelModule(
        argument_spec=dict(
            vm_name=dict(type='str'),
            backup_id=dict(type='str'),
            mode=dict(type='str', choices=['full', 'incremental'], default='incremental'),
            storage_domain=dict(type='str', default=''),
            description=dict(type='str', default=''),
            state=dict(type='str', choices=['present', 'absent', 'restored'], default='present'),
            restore_vm_name=dict(type='str', default=''),
            restore_disk_name=dict(type='str', default=''),
            disk=dict(type='str', default=''),
            wait=dict(type='bool', default=True),
            timeout=dict(type='int', default=3600),
        ),
        entity_key='backup',
        required_if=[('state', 'absent', ['backup_id']), ('state', 'restored', ['backup_id'])],
    )
    p = module.params
    if p['state'] == 'present' and not p['vm_name'] and not p['backup_id']:
        module.fail_json(msg='vm_name: required to make a backup (state present)')
    if p['state'] == 'restored' and bool(p['restore_vm_name']) == bool(p['restore_disk_name']):
        module.fail_json(msg='restore_vm_name, restore_disk_name: give exactly one with '
                             'state restored (a new VM or a new floating disk)')
    if not p['wait']:
        module.fail_json(msg='wait: only true is supported; run a backup in the background '
                             'through the engine API (POST /vms/{name}/backups is a job)')
    module.apply(_call(p))


if __name__ == '__main__':
    main()
