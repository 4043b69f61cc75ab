# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.modules import disk
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import Outcome


def test_create_passes_settings_and_no_volume(engine, run_module):
    engine.answer = Outcome(True, dict(vm='db1', name='data', size_mib=10240))
    result = run_module(disk, dict(vm='db1', name='data', size='10GiB', storage_domain='data'))
    assert engine.calls == [('vm_devices.disk', ('db1', 'data'), dict(
        state='present', settings=dict(size='10GiB', storage_domain='data'), volume=None,
        check_mode=False))]
    assert result['disk']['size_mib'] == 10240


def test_attach_an_existing_volume(engine, run_module):
    engine.answer = Outcome(True, dict(vm='db2', name='data'))
    run_module(disk, dict(vm='db2', name='data', size='1GiB', storage_domain='data',
                          volume=dict(image_id='i-1', volume_id='v-1')))
    assert engine.calls[0][2]['volume'] == dict(image_id='i-1', volume_id='v-1')


def test_detached_state(engine, run_module):
    engine.answer = Outcome(True, dict(vm='db1', name='data', volume_id='v-1'))
    result = run_module(disk, dict(vm='db1', name='data', state='detached', _ansible_check_mode=True))
    assert engine.calls[0][2]['state'] == 'detached' and engine.calls[0][2]['check_mode'] is True
    assert result['disk']['volume_id'] == 'v-1'


def test_lun_and_storage_domain_exclude_each_other(engine, run_module):
    result = run_module(disk, dict(vm='db1', name='data', lun='/dev/sdb', storage_domain='data'))
    assert result['failed'] is True and 'mutually exclusive' in result['msg'] and engine.calls == []
