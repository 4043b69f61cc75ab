#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm
short_description: Manage kestrel virtual machines
version_added: 0.1.0
description:
  - Define a VM, change it, start it on a host the engine schedules, stop it, or remove it.
  - Options left unset keep their current value, so a task naming only
    O(memory) never touches the disks. For a new VM the engine fills in
    defaults (1 GiB of memory, one vCPU, V(q35), a serial console).
  - Disks and NICs are matched by O(disks[].name) and O(nics[].name). A device
    keeps its identity, its C(ua-) alias and its MAC address across runs.
  - The given O(nics) list is the complete list (a NIC left out is removed).
  - A disk holds data, so a disk left out of O(disks) is refused rather than
    deleted, and so is a change of an existing disk's size, format or storage
    domain. O(state=absent) removes the VM with its disks.
  - The engine renders the libvirt domain XML itself; with C(--diff) the task
    shows the domain XML before and after.
  - A running VM keeps the configuration it started with until it restarts;
    RV(vm.next_run) then says a change waits for the next start.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Name of the VM.
    type: str
    required: true
  state:
    description:
      - V(present) makes sure the VM is defined with the options given, and
        does not change whether it runs.
      - V(running) also starts it on a host the scheduler picks, if it is not running.
        When the host does not answer the start in time, the task fails and the
        VM stays V(WaitForLaunch) on that host until the host reports it running
        or not (the engine loop records it); V(running) meanwhile fails rather
        than start it a second time.
      - V(stopped) also stops it, if it runs (a guest shutdown, or a power off with O(force)).
      - V(absent) powers it off if it runs and removes it with its disks.
      - V(suspended) hibernates a running VM (its memory saved to storage, the
        VM stopped); V(running) later resumes it from there, V(stopped) discards
        the saved memory.
      - V(rebooted) reboots a running VM (the guest restarts in the same
        domain); it is always a change and fails for a VM that is not running.
    type: str
    choices: [present, running, stopped, absent, suspended, rebooted]
    default: present
  cluster:
    description: Cluster of the VM. Required to create one; a VM must be down to move.
    type: str
  description:
    description: Free text shown to people.
    type: str
  memory:
    description:
      - Memory, with a unit (V(512MiB), V(4GiB)); a bare number means MiB.
    type: str
  cpu:
    description: Virtual CPU topology; sub-options left out are 1.
    type: dict
    suboptions:
      sockets:
        description: Number of sockets.
        type: int
      cores:
        description: Cores per socket.
        type: int
      threads:
        description: Threads per core.
        type: int
      mode:
        description:
          - CPU model mode. When not given, V(host-model) on clusters whose
            virt_type is C(kvm), and the hypervisor default on C(qemu) (TCG).
        type: str
        choices: [host-model, host-passthrough, custom]
      model:
        description: Named CPU model (implies O(cpu.mode=custom)).
        type: str
      max_vcpus:
        description:
          - vCPUs the VM can grow to while running; a multiple of cores x threads.
        type: int
  max_memory:
    description:
      - Memory the VM can grow to by hotplug (a size as for O(memory)); V(0) for none.
    type: str
  firmware:
    description: Firmware of the VM.
    type: dict
    suboptions:
      type:
        description: V(bios) or V(uefi).
        type: str
        choices: [bios, uefi]
      secure_boot:
        description: UEFI secure boot (needs V(uefi) and machine V(q35)).
        type: bool
  numa:
    description: Guest NUMA topology; vCPUs and memory are split evenly over the nodes.
    type: dict
    suboptions:
      nodes:
        description: Number of NUMA nodes.
        type: int
  hugepages:
    description:
      - Back the memory with huge pages, V(2MiB) or V(1GiB) (V(true) means 2MiB); V(false) for none.
    type: raw
  cdrom:
    description:
      - A CD-ROM drive. An ISO as C(<storage domain>:<path>) (never a host path, never
        inside a disk image directory), an empty string for an empty drive, V(false)
        for no drive, or a mapping with C(iso) and C(boot_order).
    type: raw
  graphics:
    description:
      - A graphical console, V(vnc) or V(spice), or a mapping with C(type),
        C(listen) (an IP address, V(127.0.0.1) by default) and C(password);
        V(false) for none. A C(listen) address other than loopback needs a C(password).
      - The password is kept out of the module's output, logs and diffs (shown as V(********)).
    type: raw
  video:
    description:
      - The video device, a model (V(virtio), V(qxl), V(vga), V(bochs), V(ramfb))
        or a mapping with C(model) and C(heads); V(false) for none. A VM with
        graphics gets one when not given.
    type: raw
  guest_agent:
    description: A channel for the qemu-guest-agent in the guest.
    type: bool
  rng:
    description:
      - A virtio random number generator; V(true) or a mapping with C(source)
        (V(urandom), V(random), V(hwrng)).
    type: raw
  watchdog:
    description:
      - A watchdog; V(true) or a mapping with C(model) (V(i6300esb), V(ib700))
        and C(action) (V(reset), V(shutdown), V(poweroff), V(pause), V(none), V(dump), V(inject-nmi)).
    type: raw
  balloon:
    description:
      - The memory balloon; V(false) to remove it, or a mapping with C(enabled)
        and C(guarantee) (memory the guest keeps, for the host's memory policy).
    type: raw
  tpm:
    description:
      - An emulated TPM; V(true) or a mapping with C(model) (V(tpm-crb), V(tpm-tis))
        and C(version) (V(2.0), V(1.2)).
    type: raw
  cloud_init:
    description:
      - A cloud-init NoCloud payload delivered on a CD-ROM, built on the host as a file
        only root and the VM's QEMU process can read.
    type: dict
    suboptions:
      user_data:
        description:
          - The user-data document (C(#cloud-config) ...). It often carries passwords, so it is
            kept out of the module's output, logs and diffs, and out of the domain's metadata.
        type: str
      hostname:
        description: The guest's host name (meta-data C(local-hostname)); the VM name by default.
        type: str
      ssh_keys:
        description: OpenSSH public keys for the default user (meta-data C(public-keys)).
        type: list
        elements: str
      network_config:
        description: A network-config document, as a string or a mapping.
        type: raw
  launch_paused:
    description: Start the VM paused.
    type: bool
  high_availability:
    description: Restart the VM elsewhere when its host fails.
    type: dict
    suboptions:
      enabled:
        description: Whether the VM is highly available.
        type: bool
      priority:
        description: Restart order, 0 to 100 (higher first).
        type: int
  placement:
    description: Where the scheduler may run the VM.
    type: dict
    suboptions:
      hosts:
        description: Hosts the VM is pinned to (any of them).
        type: list
        elements: str
      affinity_groups:
        description: Affinity groups the VM belongs to.
        type: list
        elements: str
      hooks:
        description:
          - Host hooks the VM cannot run without; hosts that lack one are
            filtered out. A hook is named after its script, without the
            ordering prefix (C(50_sap_agent) provides V(sap_agent)).
        type: list
        elements: str
  machine:
    description: QEMU machine type. New VMs use V(q35).
    type: str
    choices: [pc, q35]
  kernel:
    description:
      - Kernel to boot directly, as C(<storage domain>:<path>) (for example
        V(images:vmlinuz)). Host paths are refused; the file must be on a storage domain
        an administrator set up.
      - An empty string removes it.
    type: str
  initrd:
    description: Initial ramdisk to go with O(kernel), written the same way.
    type: str
  cmdline:
    description: Kernel command line for O(kernel).
    type: str
  serial_console:
    description:
      - Give the VM a serial console whose output the engine can read
        (C(kestrel vm console NAME)). New VMs have one.
    type: bool
  custom_properties:
    description:
      - Names and values handed to the host's hooks, as oVirt's custom properties.
      - Each name must be allowed by the cluster's administrator, with a pattern the value
        matches (M(kestrel.virt.cluster) O(kestrel.virt.cluster#module:custom_properties));
        checked when the properties or the cluster change and again at every start.
      - Hooks read a property from the environment variable C(KESTREL_PROP_<name>).
    type: dict
  tags:
    description:
      - Labels of the VM, the complete list. The C(kestrel.virt.kestrel) inventory
        groups VMs by them (C(tag_<name>)). They do not change the domain.
    type: list
    elements: str
  template:
    description:
      - Make a new VM from this template (M(kestrel.virt.template)); the VM inherits
        the template's settings and disks, and the options the task sets override
        them. A task's O(disks) entry named as a template disk changes that disk's
        settings (it may grow it, and may leave out C(size) and C(storage_domain));
        other entries add disks. O(nics), when given, is the complete list; else
        the template's NICs are taken with new MAC addresses.
      - Used only when the VM is created. Naming another template (or version) for
        an existing VM is refused; naming its own is no change.
      - The template and the VM are in the same cluster.
    type: str
  template_version:
    description:
      - Version number of O(template); by default the latest version.
    type: int
  clone:
    description:
      - With O(template), V(false) makes thin disks (each a qcow2 overlay on the
        template's volume, on the template volume's storage domain, made at the VM's
        first start; the template cannot be removed while the VM exists).
      - V(true) copies each template disk into an independent volume when the VM is
        created (a host of the cluster copies it, and the task waits).
      - Used only when the VM is created.
    type: bool
    default: false
  snapshot_vm:
    description:
      - Make a new VM as a full copy of this VM (as oVirt clones a VM), with its
        settings (but its cloud-init, placement and tags) and a copy of each of its
        disks. The options the task sets override them, as for O(template).
      - Without O(snapshot_name) or O(snapshot_id) the copy is of the VM's disks as
        they are, and the source VM must be Down.
      - With one of them the copy is of that snapshot of the VM (its settings when the
        snapshot was taken, each disk's frozen volume with the volumes below it
        flattened); the source VM may be running. Volume disks only (LUNs are shared,
        not copied); the new VM gets new MAC addresses.
      - Used only when the VM is created.
    type: str
  snapshot_name:
    description:
      - With O(snapshot_vm), clone the snapshot of that VM whose description is this
        (as ovirt_vm). Several snapshots with that description are refused, naming
        their ids; give O(snapshot_id) then.
      - Used only when the VM is created.
    type: str
  snapshot_id:
    description:
      - With O(snapshot_vm), clone the snapshot of that VM with this id.
        Mutually exclusive with O(snapshot_name).
      - Used only when the VM is created.
    type: str
  force:
    description:
      - With O(state=stopped), power the VM off at once instead of asking the guest to shut down.
    type: bool
    default: false
  wait:
    description:
      - With O(state=running), wait until the VM is Up before returning.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for the VM to come up (O(wait)) or for the guest to shut down.
    type: int
    default: 120
extends_documentation_fragment:
  - kestrel.virt.disk.vm_disks
  - kestrel.virt.nic.vm_nics
  - kestrel.virt.engine
  - kestrel.virt.engine.attributes
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - The engine asks the VM's host whether the VM runs, so check mode
        predicts a start or stop exactly; nothing is changed on the host.
  diff_mode:
    support: full
    details:
      - The diff is the libvirt domain XML the engine renders, before and after.
"""

EXAMPLES = r"""
- name: A tiny VM booting a kernel directly, running
  kestrel.virt.vm:
    name: vm1
    cluster: demo
    memory: 128MiB
    kernel: images:vmlinuz
    initrd: images:initrd.img
    cmdline: console=ttyS0
    disks:
      - name: root
        size: 64MiB
        format: qcow2
        storage_domain: data
    nics:
      - name: nic1
        network: kestrelmgmt
    state: running

- name: A thin VM from the latest version of template debian12, with a bigger disk
  kestrel.virt.vm:
    name: web1
    template: debian12
    memory: 2GiB
    disks:
      - name: root
        size: 20GiB
    cloud_init:
      hostname: web1
    state: running

- name: An independent copy of version 1 of it
  kestrel.virt.vm:
    name: web2
    template: debian12
    template_version: 1
    clone: true

- name: A clone of the stopped VM web1
  kestrel.virt.vm:
    name: web1-copy
    snapshot_vm: web1

- name: A clone of web1 as it was at its snapshot "before upgrade" (web1 may run)
  kestrel.virt.vm:
    name: web1-before
    snapshot_vm: web1
    snapshot_name: before upgrade

- name: Give it more memory at its next start, nothing else changes
  kestrel.virt.vm:
    name: vm1
    memory: 256MiB

- name: Power it off now
  kestrel.virt.vm:
    name: vm1
    state: stopped
    force: true

- name: Remove it and its disks
  kestrel.virt.vm:
    name: vm1
    state: absent
"""

RETURN = r"""
vm:
  description: The VM after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    id:
      description: Engine identifier, also the libvirt domain UUID on its host.
      type: str
      sample: 7d3f4f0e-1b7c-4c55-9d7f-3b0f7f6f2a10
    name:
      description: Name of the VM.
      type: str
      sample: vm1
    cluster:
      description: Cluster of the VM.
      type: str
      sample: demo
    description:
      description: Free text.
      type: str
    template:
      description: The template version the VM was made from (C(name), C(version)); null for none.
      type: dict
      sample: {name: debian12, version: 2}
    status:
      description: Status as the engine knows it (V(Down), V(WaitForLaunch), V(PoweringUp), V(Up), ...).
      type: str
      sample: Up
    exit_reason:
      description: Why the VM last went down.
      type: str
      sample: shut down
    host:
      description: Host the VM runs on; null when it does not run.
      type: str
      sample: h1
    memory_mib:
      description: Memory in MiB.
      type: int
      sample: 128
    vcpus:
      description: Number of virtual CPUs (sockets x cores x threads).
      type: int
      sample: 1
    cpu:
      description: CPU topology.
      type: dict
      sample: {sockets: 1, cores: 1, threads: 1}
    machine:
      description: QEMU machine type.
      type: str
      sample: q35
    kernel:
      description: Kernel booted directly, empty when none.
      type: str
      sample: images:vmlinuz
    initrd:
      description: Initial ramdisk, empty when none.
      type: str
      sample: images:initrd.img
    cmdline:
      description: Kernel command line.
      type: str
      sample: console=ttyS0
    tags:
      description: Labels of the VM.
      type: list
      elements: str
      sample: [web, production]
    custom_properties:
      description: Custom properties for the host's hooks.
      type: dict
    disks:
      description: Disks with their device id and C(ua-) alias.
      type: list
      elements: dict
    nics:
      description: NICs with their device id, C(ua-) alias and MAC address.
      type: list
      elements: dict
    devices:
      description: Every device the engine manages, with its guest address once the VM ran.
      type: list
      elements: dict
    next_run:
      description: A configuration change waits for the VM's next start.
      type: bool
      returned: when O(state) is not V(absent)
      sample: false
    placement:
      description: Why the scheduler chose the host, when this task started the VM.
      type: dict
      returned: when the task started the VM
"""

from ansible_collections.kestrel.virt.plugins.module_utils._args_common import VM_DISKS_ARG_SPEC, VM_NICS_ARG_SPEC
from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule, drop_unset

# The options that make up the VM spec the engine validates; the rest steer the task.
SPEC_OPTIONS = ('name', 'cluster', 'description', 'memory', 'max_memory', 'cpu', 'machine',
                'firmware', 'numa', 'hugepages', 'kernel', 'initrd', 'cmdline', 'disks', 'cdrom',
                'nics', 'graphics', 'video', 'serial_console', 'guest_agent', 'rng', 'watchdog',
                'balloon', 'tpm', 'cloud_init', 'launch_paused', 'custom_properties',
                'high_availability', 'placement', 'tags', 'template', 'template_version',
                'clone', 'snapshot_vm', 'snapshot_name', 'snapshot_id')


def vm_spec(params):
    """The VM spec from the module's options, without the ones left unset."""
    return drop_unset(dict((key, params[key]) for key in SPEC_OPTIONS))


def console_password(params):
    graphics = params['graphics']
    return [graphics.get('password')] if isinstance(graphics, dict) else []


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'running', 'stopped', 'absent',
                                            'suspended', 'rebooted'],
                       default='present'),
            cluster=dict(type='str'),
            description=dict(type='str'),
            memory=dict(type='str'),
            cpu=dict(type='dict', options=dict(
                sockets=dict(type='int'),
                cores=dict(type='int'),
                threads=dict(type='int'),
                mode=dict(type='str', choices=['host-model', 'host-passthrough', 'custom']),
                model=dict(type='str'),
                max_vcpus=dict(type='int'),
            )),
            max_memory=dict(type='str'),
            firmware=dict(type='dict', options=dict(
                type=dict(type='str', choices=['bios', 'uefi']),
                secure_boot=dict(type='bool'),
            )),
            numa=dict(type='dict', options=dict(nodes=dict(type='int'))),
            hugepages=dict(type='raw'),
            cdrom=dict(type='raw'),
            graphics=dict(type='raw'),
            video=dict(type='raw'),
            guest_agent=dict(type='bool'),
            rng=dict(type='raw'),
            watchdog=dict(type='raw'),
            balloon=dict(type='raw'),
            tpm=dict(type='raw'),
            cloud_init=dict(type='dict', options=dict(
                user_data=dict(type='str', no_log=True),
                hostname=dict(type='str'),
                ssh_keys=dict(type='list', elements='str', no_log=False),
                network_config=dict(type='raw'),
            )),
            launch_paused=dict(type='bool'),
            high_availability=dict(type='dict', options=dict(
                enabled=dict(type='bool'),
                priority=dict(type='int'),
            )),
            placement=dict(type='dict', options=dict(
                hosts=dict(type='list', elements='str'),
                affinity_groups=dict(type='list', elements='str'),
                hooks=dict(type='list', elements='str'),
            )),
            machine=dict(type='str', choices=['pc', 'q35']),
            kernel=dict(type='str'),
            initrd=dict(type='str'),
            cmdline=dict(type='str'),
            **VM_DISKS_ARG_SPEC,
            **VM_NICS_ARG_SPEC,
            serial_console=dict(type='bool'),
            custom_properties=dict(type='dict'),
            tags=dict(type='list', elements='str'),
            template=dict(type='str'),
            template_version=dict(type='int'),
            clone=dict(type='bool', default=False),
            snapshot_vm=dict(type='str'),
            snapshot_name=dict(type='str'),
            snapshot_id=dict(type='str'),
            force=dict(type='bool', default=False),
            wait=dict(type='bool', default=True),
            timeout=dict(type='int', default=120),
        ),
        entity_key='vm',
        secrets=console_password,
        mutually_exclusive=[('template', 'snapshot_vm'), ('snapshot_name', 'snapshot_id')],
        required_by=dict(snapshot_name='snapshot_vm', snapshot_id='snapshot_vm'),
    )
    p = module.params
    spec = vm_spec(p)
    if not p['clone']:
        spec.pop('clone')  # the default: only said for a VM made from a template
    module.apply(lambda engine, check_mode: engine.vms.ensure(
        spec, state=p['state'], check_mode=check_mode, force=p['force'], wait=p['wait'],
        timeout=p['timeout']))


if __name__ == '__main__':
    main()
