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
  - Without O(vm) the disk is a floating disk (oVirt's), found by O(name); an
    uploaded image or ISO that belongs to no VM. An ISO (O(content_type=iso))
    is then named by a VM's C(cdrom) (oVirt's C(cd_iso)); a data disk can be the
    source of a template.
  - O(upload_image_path) uploads a file from the machine the module runs on,
    streamed to a host of a cluster the storage domain is attached to;
    O(upload_image_url) has that host download it. The host checks the image
    (format, backing files, consistency) before it becomes a volume; a refused
    or failed upload leaves no disk registered and no file on the domain.
  - Uploading a floating disk again with the same content (the same sha256) does
    nothing; other content is refused unless O(force) is set, which replaces it.
    A VM's disk that exists already is never replaced by an upload.
  - O(download_image_path) writes the disk (flattened, in O(format)) to a file on
    the machine the module runs on; the file appears only once its sha256 is
    checked against the host's.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  vm:
    description:
      - Name of the VM.
      - Without it, O(name) is a floating disk.
    type: str
  name:
    description: Name of the disk within the VM, or of the floating disk.
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
  upload_image_path:
    description:
      - Path of an image file to upload, on the machine the module runs on.
      - Its format is detected (or given by O(image_format)) and converted to O(format).
      - Mutually exclusive with O(upload_image_url) and O(download_image_path).
    type: path
  upload_image_url:
    description:
      - An http or https URL of an image, downloaded by the host (not the controller).
      - The host refuses loopback, link-local, multicast and unspecified addresses.
    type: str
  image_format:
    description:
      - The format of the uploaded image; the upload is refused when the image is not
        in it. Empty or unset detects the format.
    type: str
    choices: ['', qcow2, raw, vmdk, vdi, vhdx]
    default: ''
  image_checksum:
    description:
      - The expected checksum of the uploaded image, C(sha256:<hex>); a mismatch fails
        the upload. Also how an O(upload_image_url) upload is told apart from the
        one before.
    type: str
  download_image_path:
    description:
      - Path of the file to write the disk to, on the machine the module runs on.
      - The file is written in O(format) (default the disk's), mode 0600.
    type: path
  content_type:
    description:
      - What the uploaded disk holds; C(iso) is stored raw and read-only, for a
        VM's C(cdrom).
    type: str
    choices: [data, iso]
    default: data
  force:
    description:
      - Replace a floating disk whose content differs from the upload.
    type: bool
    default: false
  timeout:
    description:
      - Seconds the host may take to check and convert an upload (or download an
        O(upload_image_url)); the transfer itself is bounded by its idle time.
    type: int
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

- name: Upload a cloud image as a floating disk
  kestrel.virt.disk:
    name: debian-12
    storage_domain: data
    upload_image_path: /var/tmp/debian-12-genericcloud-amd64.qcow2
    image_format: qcow2

- name: Have a host download an image, checked against its checksum
  kestrel.virt.disk:
    name: alpine
    storage_domain: data
    upload_image_url: https://images.example.com/alpine.qcow2
    image_checksum: "sha256:{{ alpine_sha256 }}"

- name: An installer ISO for VMs' cdrom
  kestrel.virt.disk:
    name: netinst.iso
    storage_domain: data
    content_type: iso
    upload_image_path: /var/tmp/debian-12-netinst.iso

- name: Download a VM's disk, flattened to raw
  kestrel.virt.disk:
    vm: db1
    name: data
    download_image_path: /backup/db1-data.raw
    format: raw

- name: Remove a floating disk
  kestrel.virt.disk:
    name: debian-12
    state: absent
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
    sha256:
      description: SHA-256 of the uploaded (or downloaded) bytes.
      type: str
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    transferred_bytes:
      description: Bytes sent to (or received from) the host.
      type: int
      sample: 1048576
    upload_seconds:
      description: How long the upload took, checking and converting included.
      type: float
      sample: 3.2
    content_type:
      description: C(data) or C(iso) (floating disks).
      type: str
      sample: data
"""

from ansible_collections.kestrel.virt.plugins.module_utils._args_common import (
    DISK_ARG_SPEC,
    IMAGE_ARG_SPEC,
)
from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule, drop_unset

SETTINGS = tuple(DISK_ARG_SPEC)


def main():
    module = KestrelModule(
        argument_spec=dict(
            vm=dict(type='str'),
            name=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'detached', 'absent'], default='present'),
            volume=dict(type='dict', options=dict(
                image_id=dict(type='str', required=True),
                volume_id=dict(type='str', required=True),
            )),
            **dict(DISK_ARG_SPEC, **IMAGE_ARG_SPEC)
        ),
        entity_key='disk',
        mutually_exclusive=[('lun', 'storage_domain'), ('lun', 'size'), ('lun', 'volume'),
                            ('upload_image_path', 'upload_image_url', 'download_image_path',
                             'volume', 'lun')],
    )
    p = module.params
    settings = drop_unset(dict((key, p[key]) for key in SETTINGS))
    upload = dict(upload_image_path=p['upload_image_path'],
                  upload_image_url=p['upload_image_url'], image_format=p['image_format'],
                  image_checksum=p['image_checksum'] or '', content_type=p['content_type'],
                  force=p['force'], timeout=p['timeout'])
    if p['upload_image_path'] or p['upload_image_url']:
        if p['state'] != 'present':
            module.fail_json(msg='upload_image_path and upload_image_url need state=present')
        if p['vm']:
            module.apply(lambda engine, check_mode: engine.images.upload_vm_disk(
                p['vm'], p['name'], settings=settings, check_mode=check_mode, **upload))
        module.apply(lambda engine, check_mode: engine.images.upload(
            p['name'], storage_domain=p['storage_domain'], fmt=p['format'], size=p['size'],
            check_mode=check_mode, **upload))
    if p['download_image_path']:
        if p['vm']:
            module.apply(lambda engine, check_mode: engine.images.download_vm_disk(
                p['vm'], p['name'], p['download_image_path'], fmt=p['format'],
                check_mode=check_mode))
        module.apply(lambda engine, check_mode: engine.images.download(
            p['name'], p['download_image_path'], fmt=p['format'], check_mode=check_mode))
    if not p['vm']:
        if p['state'] == 'absent':
            module.apply(lambda engine, check_mode: engine.images.remove(
                p['name'], check_mode=check_mode))
        module.query('disk', lambda engine: engine.images.floating(p['name']))
    module.apply(lambda engine, check_mode: engine.vm_devices.disk(
        p['vm'], p['name'], state=p['state'], settings=settings, volume=p['volume'],
        check_mode=check_mode))


if __name__ == '__main__':
    main()
