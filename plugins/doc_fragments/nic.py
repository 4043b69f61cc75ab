# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.plugin_utils._fragments import as_suboptions


class ModuleDocFragment(object):

    # A NIC's settings, options of kestrel.virt.nic; NIC_ARG_SPEC in
    # module_utils/_args_common.py. Not network: kestrel.virt.nic needs it
    # only to add a NIC, kestrel.virt.vm always, so each module documents it.
    DOCUMENTATION = r"""
options:
  mac:
    description:
      - MAC address. When not given, a new NIC gets one from the cluster's MAC
        pool and keeps it on every later run.
      - MACs are unique across the engine; a MAC another VM's NIC holds is refused.
    type: str
  model:
    description: Emulated NIC model the guest sees; V(virtio) for a new NIC when not given.
    type: str
    choices: [virtio, e1000, e1000e, rtl8139]
  mtu:
    description: MTU of the guest NIC (68-65535).
    type: int
  vlan:
    description: VLAN tag on the port, 1-4094 (needs an Open vSwitch bridge).
    type: int
  link_state:
    description: Whether the link is up.
    type: str
    choices: [up, down]
  bandwidth:
    description:
      - Limits C(inbound) and C(outbound), each with C(average) (required) and
        C(peak) in KiB/s and C(burst) in KiB.
    type: dict
  boot_order:
    description: Boot from the network in this order; two devices of a VM cannot share one.
    type: int
"""

    # kestrel.virt.vm's nics (kestrel.virt.nic.vm_nics); VM_NICS_ARG_SPEC.
    # Its suboptions after name and network are DOCUMENTATION's, added below the class.
    VM_NICS = r"""
options:
  nics:
    description:
      - The VM's network interfaces.
      - Each item is the NIC's whole spec; a setting it leaves out takes the
        value a new NIC gets, but a NIC keeps its MAC address.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the NIC, unique in the VM.
        type: str
        required: true
      network:
        description:
          - Logical network of the VM's cluster (M(kestrel.virt.network)), or the
            host bridge name in a cluster without logical networks.
        type: str
        required: true
"""


# Outside the class body: ansible-test's yamllint sanity test reads every
# assignment in it as a YAML literal.
ModuleDocFragment.VM_NICS += as_suboptions(ModuleDocFragment.DOCUMENTATION, 'nics')
