# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Every choice list of kestrel.virt.vm, disk and nic is the engine's own.

A module builds its argument spec where engine_lib may be missing, so the
lists are written out in module_utils/_args_common.py and the modules rather
than imported; these tests hold them equal to the tuples the engine validates
with, in the same order, and fail for a choice list no one mapped here.
"""

from __future__ import annotations

from unittest import mock

import pytest
from ansible_collections.kestrel.virt.plugins.modules import disk, nic, vm

from engine_lib import spec
from engine_lib.services import images, vm_devices, vms

MODULES = dict(vm=vm, disk=disk, nic=nic)

DISK_CHOICES = dict(format=spec.DISK_FORMATS, interface=spec.DISK_INTERFACES,
                    cache=spec.DISK_CACHES, io=spec.DISK_IO, discard=spec.DISK_DISCARD)
NIC_CHOICES = dict(model=spec.NIC_MODELS, link_state=spec.LINK_STATES)

# (module, option path) -> the engine's tuple; "disks[].format" is a suboption of the list.
ENGINE_CHOICES = dict(
    [(('vm', 'state'), vms.STATES),
     (('vm', 'machine'), spec.MACHINES),
     (('vm', 'cpu.mode'), spec.CPU_MODES),
     (('vm', 'firmware.type'), spec.FIRMWARES),
     (('disk', 'state'), vm_devices.DISK_STATES),
     (('disk', 'image_format'), images.IMAGE_FORMATS),
     (('disk', 'content_type'), images.CONTENT_TYPES),
     (('nic', 'state'), vm_devices.NIC_STATES)]
    + [(('vm', 'disks[].' + option), choices) for option, choices in DISK_CHOICES.items()]
    + [(('disk', option), choices) for option, choices in DISK_CHOICES.items()]
    + [(('vm', 'nics[].' + option), choices) for option, choices in NIC_CHOICES.items()]
    + [(('nic', option), choices) for option, choices in NIC_CHOICES.items()])


class _Built(Exception):
    """Carries the argument spec a module's main() built, before it reads any argument."""


def _stop_with_spec(argument_spec, **_kwargs):
    raise _Built(argument_spec)


def argument_spec(module):
    """The argument spec ``module.main()`` hands to KestrelModule."""
    with mock.patch.object(module, 'KestrelModule', _stop_with_spec):
        with pytest.raises(_Built) as built:
            module.main()
    return built.value.args[0]


def choice_lists(options, prefix=''):
    """(option path, choices) for every option and suboption that has choices."""
    for name, option in options.items():
        if 'choices' in option:
            yield prefix + name, option['choices']
        if 'options' in option:
            separator = '[].' if option.get('type') == 'list' else '.'
            yield from choice_lists(option['options'], prefix + name + separator)


@pytest.fixture(scope='module')
def module_choices():
    return dict(((name, path), choices) for name, module in MODULES.items()
                for path, choices in choice_lists(argument_spec(module)))


def test_every_choice_list_is_mapped_to_the_engine(module_choices):
    assert sorted(module_choices) == sorted(ENGINE_CHOICES)


@pytest.mark.parametrize('module_name, path', sorted(ENGINE_CHOICES),
                         ids=['%s:%s' % key for key in sorted(ENGINE_CHOICES)])
def test_choices_equal_the_engine_tuple(module_choices, module_name, path):
    assert list(module_choices[(module_name, path)]) == list(ENGINE_CHOICES[(module_name, path)])
