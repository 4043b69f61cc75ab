# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""PRIVATE to kestrel.virt: not a public API, may change without notice.

Argument specs that several modules share, each paired with the doc fragment
that documents it (as kubernetes.core pairs module_utils/args_common.py with
its doc_fragments):

``DISK_ARG_SPEC``      a disk's settings: options of kestrel.virt.disk
                       (fragment ``kestrel.virt.disk``)
``IMAGE_ARG_SPEC``     uploads and downloads of kestrel.virt.disk (documented in
                       the module)
``VM_DISKS_ARG_SPEC``  kestrel.virt.vm's ``disks`` list: a name plus the same
                       settings (fragment ``kestrel.virt.disk.vm_disks``)
``NIC_ARG_SPEC``       a NIC's settings but ``network``, which kestrel.virt.nic
                       needs only to add a NIC and kestrel.virt.vm always
                       (fragment ``kestrel.virt.nic``)
``VM_NICS_ARG_SPEC``   kestrel.virt.vm's ``nics`` list (fragment
                       ``kestrel.virt.nic.vm_nics``)

The choice lists repeat engine_lib.spec's tuples rather than import them: a
module builds its argument spec, and reports a missing engine library, where
engine_lib may not be installed. tests/unit/plugins/modules/test_choices.py
holds every choice list equal to the engine's.
"""

from __future__ import annotations

DISK_ARG_SPEC = dict(
    size=dict(type='str'),
    storage_domain=dict(type='str'),
    format=dict(type='str', choices=['qcow2', 'raw']),
    lun=dict(type='str'),
    interface=dict(type='str', choices=['virtio', 'sata', 'scsi']),
    bootable=dict(type='bool'),
    boot_order=dict(type='int'),
    readonly=dict(type='bool'),
    shareable=dict(type='bool'),
    cache=dict(type='str', choices=['default', 'none', 'writethrough', 'writeback', 'directsync',
                                    'unsafe']),
    io=dict(type='str', choices=['default', 'native', 'threads', 'io_uring']),
    discard=dict(type='str', choices=['ignore', 'unmap']),
    serial=dict(type='str'),
    iotune=dict(type='dict'),
)

# Images in and out of a disk: options of kestrel.virt.disk only (a VM's disks list
# describes disks, it does not move their bytes).
IMAGE_ARG_SPEC = dict(
    upload_image_path=dict(type='path'),
    upload_image_url=dict(type='str'),
    image_format=dict(type='str', choices=['', 'qcow2', 'raw', 'vmdk', 'vdi', 'vhdx'], default=''),
    image_checksum=dict(type='str'),
    download_image_path=dict(type='path'),
    content_type=dict(type='str', choices=['data', 'iso'], default='data'),
    force=dict(type='bool', default=False),
    timeout=dict(type='int'),
)

VM_DISKS_ARG_SPEC = dict(
    disks=dict(type='list', elements='dict', options=dict(
        name=dict(type='str', required=True),
        **DISK_ARG_SPEC
    )),
)

NIC_ARG_SPEC = dict(
    mac=dict(type='str'),
    model=dict(type='str', choices=['virtio', 'e1000', 'e1000e', 'rtl8139']),
    mtu=dict(type='int'),
    vlan=dict(type='int'),
    link_state=dict(type='str', choices=['up', 'down']),
    bandwidth=dict(type='dict'),
    boot_order=dict(type='int'),
)

VM_NICS_ARG_SPEC = dict(
    nics=dict(type='list', elements='dict', options=dict(
        name=dict(type='str', required=True),
        network=dict(type='str', required=True),
        **NIC_ARG_SPEC
    )),
)
