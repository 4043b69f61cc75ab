# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json

from ansible_collections.kestrel.virt.plugins.modules import vm
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import Outcome

VM = dict(id='7d3f', name='vm1', status='Up', host='h1', next_run=False)


def ensure_call(engine):
    (name, args, kwargs), = engine.calls
    assert name == 'vms.ensure'
    return args[0], kwargs


def test_spec_holds_only_what_the_user_set(engine, run_module):
    """A partial spec must stay partial: unset options would reset the VM."""
    engine.answer = Outcome(False, VM)
    run_module(vm, dict(name='vm1', memory='256MiB'))
    spec, kwargs = ensure_call(engine)
    assert spec == dict(name='vm1', memory='256MiB')
    assert kwargs == dict(state='present', check_mode=False, force=False, wait=True, timeout=120)


def test_unset_suboptions_are_left_to_the_engine_defaults(engine, run_module):
    engine.answer = Outcome(True, VM)
    run_module(vm, dict(
        name='vm1', cluster='demo', cpu=dict(cores=2),
        disks=[dict(name='root', size='64MiB', storage_domain='data')],
        nics=[dict(name='nic1', network='kestrelmgmt', mac='56:6f:4b:00:00:01')],
        serial_console=False, custom_properties=dict(hugepages='2048')))
    spec = ensure_call(engine)[0]
    assert spec == dict(
        name='vm1', cluster='demo', cpu=dict(cores=2),
        disks=[dict(name='root', size='64MiB', storage_domain='data')],
        nics=[dict(name='nic1', network='kestrelmgmt', mac='56:6f:4b:00:00:01')],
        serial_console=False, custom_properties=dict(hugepages='2048'))


def test_an_integer_memory_is_passed_as_mib_text(engine, run_module):
    engine.answer = Outcome(False, VM)
    run_module(vm, dict(name='vm1', memory=128))
    spec = ensure_call(engine)[0]
    assert spec['memory'] == '128'


def test_an_empty_device_list_is_kept_it_removes_every_disk(engine, run_module):
    engine.answer = Outcome(True, VM)
    run_module(vm, dict(name='vm1', disks=[]))
    spec = ensure_call(engine)[0]
    assert spec == dict(name='vm1', disks=[])


def test_power_options_steer_the_task_not_the_spec(engine, run_module):
    engine.answer = Outcome(True, dict(VM, status='Down', host=None))
    result = run_module(vm, dict(name='vm1', state='stopped', force=True, timeout=5,
                                 _ansible_check_mode=True))
    spec, kwargs = ensure_call(engine)
    assert spec == dict(name='vm1')
    assert kwargs == dict(state='stopped', check_mode=True, force=True, wait=True, timeout=5)
    assert result['changed'] is True
    assert result['vm']['status'] == 'Down'


def test_diff_is_the_domain_xml(engine, run_module):
    before = "<domain type='qemu'><memory unit='KiB'>131072</memory></domain>"
    after = "<domain type='qemu'><memory unit='KiB'>262144</memory></domain>"
    engine.answer = Outcome(True, dict(VM, next_run=True), dict(before=before, after=after))
    result = run_module(vm, dict(name='vm1', memory='256MiB', _ansible_diff=True))
    assert result['diff'] == dict(before=before, after=after)
    assert result['vm']['next_run'] is True


def test_absent_returns_no_vm(engine, run_module):
    engine.answer = Outcome(True, None, dict(before='<domain/>', after=''))
    result = run_module(vm, dict(name='vm1', state='absent'))
    kwargs = ensure_call(engine)[1]
    assert kwargs['state'] == 'absent'
    assert result['vm'] is None


def test_a_lun_disk_needs_no_size_so_the_engine_checks_it(engine, run_module):
    """size is required unless lun is given: the engine's spec check says which (disks[0].size)."""
    engine.answer = Outcome(True, VM)
    run_module(vm, dict(name='vm1', disks=[dict(name='db', lun='/dev/sdb', interface='scsi')]))
    spec = ensure_call(engine)[0]
    assert spec['disks'] == [dict(name='db', lun='/dev/sdb', interface='scsi')]


def test_the_console_password_and_the_user_data_never_reach_the_output_or_the_log(
        engine, run_module, monkeypatch):
    logged = []
    monkeypatch.setattr(vm.KestrelModule, 'log', lambda self, msg, log_args=None: logged.append(msg))
    engine.answer = Outcome(True, VM, dict(before='', after="<graphics passwd='********'/>"))
    result = run_module(vm, dict(
        name='vm1', graphics=dict(type='vnc', password='vnc-s3cret'),
        cloud_init=dict(user_data='#cloud-config\npassword: hunter2-pw\n', hostname='web1'),
        _ansible_diff=True))
    spec = ensure_call(engine)[0]
    assert spec['graphics']['password'] == 'vnc-s3cret'
    assert spec['cloud_init'] == dict(user_data='#cloud-config\npassword: hunter2-pw\n',
                                      hostname='web1')
    shown = json.dumps(result) + ''.join(logged)
    assert logged and 'web1' in shown
    assert 'vnc-s3cret' not in shown and 'hunter2-pw' not in shown
