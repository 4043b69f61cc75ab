# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
import yaml
from ansible_collections.kestrel.virt.plugins.doc_fragments import disk, nic
from ansible_collections.kestrel.virt.plugins.plugin_utils._fragments import as_suboptions


def options(fragment):
    return yaml.safe_load(fragment)['options']


@pytest.mark.parametrize('fragment, var, parent, own', [
    (disk.ModuleDocFragment, 'VM_DISKS', 'disks', {'name'}),
    (nic.ModuleDocFragment, 'VM_NICS', 'nics', {'name', 'network'}),
])
def test_vm_list_items_are_the_device_options_plus_their_own(fragment, var, parent, own):
    top = options(fragment.DOCUMENTATION)
    nested = options(getattr(fragment, var))[parent]['suboptions']
    assert set(nested) == own | set(top)
    for name, option in top.items():
        assert (option.get('type'), option.get('choices')) == \
            (nested[name].get('type'), nested[name].get('choices')), name


def test_option_references_point_into_the_list():
    nested = options(disk.ModuleDocFragment.VM_DISKS)['disks']['suboptions']
    assert options(disk.ModuleDocFragment.DOCUMENTATION)['size']['description'][1] == \
        'Required for a new disk unless O(lun) is given.'
    assert nested['size']['description'][1] == 'Required for a new disk unless O(disks[].lun) is given.'


def test_a_fragment_with_more_than_options_is_refused():
    with pytest.raises(ValueError):
        as_suboptions('\noptions:\n  a:\n    type: str\nnotes:\n  - no\n', 'items')
