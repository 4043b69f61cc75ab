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


def test_a_floating_disk_upload_goes_to_the_image_service(engine, run_module):
    engine.answer = Outcome(True, dict(name='debian', sha256='ab', transferred_bytes=10,
                                       upload_seconds=0.5))
    result = run_module(disk, dict(name='debian', storage_domain='data',
                                   upload_image_path='/tmp/debian.qcow2', image_format='qcow2'))
    assert engine.calls == [('images.upload', ('debian',), dict(
        storage_domain='data', fmt=None, size=None, check_mode=False,
        upload_image_path='/tmp/debian.qcow2', upload_image_url=None, image_format='qcow2',
        image_checksum='', content_type='data', force=False, timeout=None))]
    assert result['disk']['transferred_bytes'] == 10 and result['changed'] is True


def test_an_upload_for_a_vm_is_attached_to_it(engine, run_module):
    engine.answer = Outcome(True, dict(vm='db1', name='root'))
    run_module(disk, dict(vm='db1', name='root', storage_domain='data',
                          upload_image_url='http://images/x.qcow2', _ansible_check_mode=True))
    (name, args, kwargs), = engine.calls
    assert name == 'images.upload_vm_disk' and args == ('db1', 'root')
    assert kwargs['settings'] == dict(storage_domain='data') and kwargs['check_mode'] is True


def test_download_and_removal_of_a_floating_disk(engine, run_module):
    engine.answer = Outcome(True, dict(name='debian'))
    run_module(disk, dict(name='debian', download_image_path='/tmp/out.raw', format='raw'))
    run_module(disk, dict(name='debian', state='absent'))
    assert [c[0] for c in engine.calls] == ['images.download', 'images.remove']
    assert engine.calls[0][1] == ('debian', '/tmp/out.raw') and engine.calls[0][2]['fmt'] == 'raw'


def test_upload_and_download_exclude_each_other(engine, run_module):
    result = run_module(disk, dict(name='d', upload_image_path='/a', download_image_path='/b'))
    assert result['failed'] is True and 'mutually exclusive' in result['msg'] and engine.calls == []
