# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.plugin_utils._fragments import as_suboptions


class ModuleDocFragment(object):

    # A disk's settings, the options of kestrel.virt.disk. The argument spec
    # is DISK_ARG_SPEC in module_utils/_args_common.py. Written for both
    # modules: the options of a disk that kestrel.virt.disk leaves unset keep
    # their value, an item of kestrel.virt.vm's disks is the disk's whole spec.
    DOCUMENTATION = r"""
options:
  size:
    description:
      - Size with a unit (V(64MiB), V(20GiB)); a bare number means MiB.
      - Required for a new disk unless O(lun) is given.
    type: str
  storage_domain:
    description:
      - Storage domain that holds the volume; one attached to the VM's cluster,
        when the cluster has any. Required for a new disk unless O(lun) is given.
      - Fixed once the disk exists.
    type: str
  format:
    description:
      - Volume format; V(qcow2) for a new disk when not given.
      - Fixed once the disk exists.
    type: str
    choices: [qcow2, raw]
  lun:
    description:
      - A LUN an administrator registered (C(kestrel lun add)), by its name or WWID, used as
        the disk instead of a volume. Device paths are refused.
      - Fixed once the disk exists.
    type: str
  interface:
    description: Bus the guest sees the disk on; V(virtio) for a new disk when not given.
    type: str
    choices: [virtio, sata, scsi]
  bootable:
    description: Whether the VM may boot from the disk (a O(boot_order) implies it).
    type: bool
  boot_order:
    description: Explicit boot order; two devices of a VM cannot share one.
    type: int
  readonly:
    description: Whether the guest sees the disk read-only (not on V(sata)).
    type: bool
  shareable:
    description: Whether several VMs may use the disk at once.
    type: bool
  cache:
    description: Host cache mode.
    type: str
    choices: [default, none, writethrough, writeback, directsync, unsafe]
  io:
    description: Host I/O mode; V(native) needs O(cache=none) or O(cache=directsync).
    type: str
    choices: [default, native, threads, io_uring]
  discard:
    description: Whether the guest's discard requests reach the volume.
    type: str
    choices: [ignore, unmap]
  serial:
    description:
      - Serial number the guest sees, 1-20 letters, digits, C(.), C(_) or C(-)
        (the first 20 characters of the disk id when not given).
    type: str
  iotune:
    description:
      - I/O limits, any of C(total_bytes_sec), C(read_bytes_sec), C(write_bytes_sec),
        C(total_iops_sec), C(read_iops_sec), C(write_iops_sec).
    type: dict
"""

    # kestrel.virt.vm's disks (kestrel.virt.disk.vm_disks); VM_DISKS_ARG_SPEC.
    # Its suboptions after name are DOCUMENTATION's, added below the class.
    VM_DISKS = r"""
options:
  disks:
    description:
      - The VM's disks. New volumes are created on the host when the VM first starts.
      - Each item is the disk's whole spec; a setting it leaves out takes the
        value a new disk gets.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the disk, unique in the VM.
        type: str
        required: true
"""


# Outside the class body: ansible-test's yamllint sanity test reads every
# assignment in it as a YAML literal.
ModuleDocFragment.VM_DISKS += as_suboptions(ModuleDocFragment.DOCUMENTATION, 'disks')
