#!/usr/bin/python
# -*- coding: utf-8 -*-

# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: snapshot
short_description: Take, revert to and delete snapshots of kestrel VMs
version_added: 0.1.0
description:
  - Manages a VM's snapshots, with the options of C(ovirt.ovirt.ovirt_snapshot).
  - A snapshot freezes the volume each disk writes and puts a new qcow2 overlay
    on it (in the same image). Every disk with a volume on a storage domain is
    included; LUNs and cdroms are not.
  - Of a running VM the snapshot is live (external, disk-only), quiesced through
    the guest agent when it answers (RV(snapshot.quiesced) says whether it was);
    with O(use_memory) the guest's memory is saved too. Of a stopped VM the
    overlays are made through a host that sees the storage domain.
  - O(state=restore) reverts a stopped VM to the snapshot. The volumes written
    since and the snapshots newer than it are removed (as oVirt's commit does);
    the snapshot itself stays, to revert to again. The VM gets its settings of
    then back (memory, CPU, firmware, devices), except its disks (a disk added
    since stays) and NICs (they keep their MACs). A snapshot with memory starts
    the VM from it, so it comes back running where it was.
  - O(state=absent) deletes the snapshot by merging its overlay into the volume
    below (live on a running VM, offline on a stopped one); any snapshot, not
    only the last.
  - A VM that is migrating, starting or saving its memory is refused, naming its
    status; so is a second snapshot operation on a VM while one runs.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  vm_name:
    description: Name of the VM.
    type: str
    required: true
  snapshot_id:
    description:
      - Id of the snapshot. Required for O(state=absent) and O(state=restore).
      - With O(state=present), the snapshot is only looked up (no change); unset,
        a new snapshot is taken on every run (as C(ovirt_snapshot)).
    type: str
  description:
    description: Description of a new snapshot.
    type: str
    default: ''
  use_memory:
    description: Save the running VM's memory with the snapshot.
    type: bool
    default: false
  state:
    description: Whether the snapshot should exist, or the VM be reverted to it.
    type: str
    choices: [present, absent, restore]
    default: present
  wait:
    description:
      - Accepted for C(ovirt_snapshot) compatibility. The task always returns once
        the operation is done (a snapshot takes seconds; a merge or a revert with
        memory as long as it takes).
    type: bool
    default: true
  timeout:
    description: Accepted for C(ovirt_snapshot) compatibility; the engine's own deadlines apply.
    type: int
    default: 180
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
- name: Snapshot vm1 with its memory before an upgrade
  kestrel.virt.snapshot:
    vm_name: vm1
    description: before upgrade
    use_memory: true
  register: snap

- name: Stop vm1
  kestrel.virt.vm:
    name: vm1
    state: stopped

- name: Go back to it (vm1 comes back running from the saved memory)
  kestrel.virt.snapshot:
    vm_name: vm1
    snapshot_id: "{{ snap.snapshot.id }}"
    state: restore

- name: Delete it
  kestrel.virt.snapshot:
    vm_name: vm1
    snapshot_id: "{{ snap.snapshot.id }}"
    state: absent
"""

RETURN = r"""
snapshot:
  description: The snapshot (null once deleted).
  returned: always
  type: dict
  contains:
    id:
      description: Id of the snapshot.
      type: str
    vm:
      description: Name of the VM.
      type: str
    description:
      description: Its description.
      type: str
    status:
      description: V(ok), V(locked) while an operation runs on it, V(illegal) after one failed half way.
      type: str
    use_memory:
      description: Whether the VM's memory was saved with it.
      type: bool
    memory:
      description: Whether it holds saved memory.
      type: bool
    quiesced:
      description: Whether the guest agent froze the filesystems; null for a stopped VM.
      type: bool
    created_at:
      description: When it was taken (ISO 8601).
      type: str
    disks:
      description: Per disk, the volume the snapshot froze.
      type: list
      elements: dict
    removed_snapshots:
      description: With O(state=restore), the ids of the newer snapshots the revert removed.
      type: list
      elements: str
    started_vm:
      description: With O(state=restore) of a snapshot with memory, the VM, running again.
      type: dict
    settings_restored:
      description: With O(state=restore), whether the VM got its settings of then back.
      type: bool
    settings_not_restored:
      description:
        - With O(state=restore), why the settings were left as they were (a setting no
          longer valid, such as an ISO removed since, or a snapshot taken before kestrel
          recorded all settings); empty when they were restored.
      type: str
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            vm_name=dict(type='str', required=True),
            snapshot_id=dict(type='str'),
            description=dict(type='str', default=''),
            use_memory=dict(type='bool', default=False),
            state=dict(type='str', choices=['present', 'absent', 'restore'], default='present'),
            wait=dict(type='bool', default=True),
            timeout=dict(type='int', default=180),
        ),
        entity_key='snapshot',
        required_if=[('state', 'absent', ['snapshot_id']),
                     ('state', 'restore', ['snapshot_id'])],
    )
    p = module.params
    if p['state'] == 'absent':
        def absent(engine):
            found = engine.snapshots.info(p['vm_name'], snapshot_id=p['snapshot_id'])
            if not found:
                return False, None
            if module.check_mode:
                return True, found[0]
            return True, engine.snapshot_merge.delete(p['vm_name'], p['snapshot_id'])
        changed, entity = module._call_engine(absent)
        module.exit_json(changed=changed, snapshot=entity)
    elif p['state'] == 'restore':
        module.apply(lambda engine, check_mode: engine.snapshots.restore(
            p['vm_name'], p['snapshot_id'], check_mode=check_mode))
    else:
        module.apply(lambda engine, check_mode: engine.snapshots.create(
            p['vm_name'], snapshot_id=p['snapshot_id'] or '', description=p['description'],
            use_memory=p['use_memory'], check_mode=check_mode))


if __name__ == '__main__':
    main()
