# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json

from ansible_collections.kestrel.virt.plugins.modules import host
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import (
    FakeError,
    Outcome,
)


def test_present_registers_with_the_default_agent_port(engine, run_module):
    engine.answer = Outcome(True, dict(name='h1', address='10.77.0.1', status='Up'))
    result = run_module(host, dict(name='h1', address='10.77.0.1', cluster='demo'))
    assert engine.calls == [('hosts.ensure', ('h1',), dict(
        address='10.77.0.1', cluster='demo', port=54321, power_management=None,
        soft_fence_command=None, ssh_host_keys=None, check_mode=False))]
    assert result['host']['status'] == 'Up'


def test_present_needs_address_and_cluster(engine, run_module):
    result = run_module(host, dict(name='h1', cluster='demo'))
    assert result['failed'] is True
    assert 'address' in result['msg']
    assert engine.calls == []


def test_absent_needs_only_the_name(engine, run_module):
    engine.answer = Outcome(False, None)
    result = run_module(host, dict(name='h1', state='absent', _ansible_check_mode=True))
    assert engine.calls == [('hosts.remove', ('h1',), dict(check_mode=True))]
    assert result['changed'] is False
    assert result['host'] is None


def test_unreachable_agent_fails_with_its_code(engine, run_module):
    engine.answer = FakeError('AgentUnreachable', 'agent at 10.77.0.9:54321 unreachable: timed out')
    result = run_module(host, dict(name='h9', address='10.77.0.9', cluster='demo'))
    assert result['failed'] is True
    assert result['msg'] == 'agent at 10.77.0.9:54321 unreachable: timed out'
    assert result['error']['code'] == 'AgentUnreachable'


def test_maintenance_needs_only_the_name_and_passes_the_timeout(engine, run_module):
    engine.answer = Outcome(True, dict(name='h1', status='Maintenance', migrations=[
        dict(vm='vm1', source='h1', destination='h2', status='succeeded')]))
    result = run_module(host, dict(name='h1', state='maintenance', timeout=120))
    assert engine.calls == [('hosts.maintenance', ('h1',), dict(check_mode=False, timeout=120))]
    assert result['changed'] is True
    assert result['host']['migrations'][0]['destination'] == 'h2'


def test_maintenance_check_mode_is_passed_down(engine, run_module):
    engine.answer = Outcome(True, dict(name='h1', status='Maintenance', migrations=[]))
    run_module(host, dict(name='h1', state='maintenance', _ansible_check_mode=True))
    assert engine.calls == [('hosts.maintenance', ('h1',), dict(check_mode=True, timeout=600))]


def test_a_refused_maintenance_fails_with_the_engine_message(engine, run_module):
    engine.answer = FakeError('Conflict', "host 'h1' cannot go to maintenance, nothing was "
                              "changed: no host can run VM 'db' (h2: the VM is pinned to h1)",
                              refused=dict(db='pinned'))
    result = run_module(host, dict(name='h1', state='maintenance'))
    assert result['failed'] is True
    assert "VM 'db'" in result['msg']
    assert result['error']['details']['refused'] == dict(db='pinned')


def test_active_calls_activate(engine, run_module):
    engine.answer = Outcome(False, dict(name='h1', status='Up', migrations=[]))
    result = run_module(host, dict(name='h1', state='active'))
    assert engine.calls == [('hosts.activate', ('h1',), dict(check_mode=False))]
    assert result['changed'] is False


def test_the_fence_password_joins_the_agents_options_and_is_never_printed(engine, run_module):
    engine.answer = Outcome(True, dict(name='h1', status='Up'))
    result = run_module(host, dict(name='h1', address='10.77.0.1', cluster='demo',
                                   power_management=dict(agent='fence_ipmilan',
                                                         options=dict(ip='10.0.0.9'),
                                                         password='s3cr3t-pw')))
    [call] = engine.calls
    assert call[2]['power_management'] == dict(
        agent='fence_ipmilan', options=dict(ip='10.0.0.9', password='s3cr3t-pw'))
    assert 's3cr3t-pw' not in json.dumps(result)


def test_a_password_given_among_the_options_is_hidden_from_the_output(engine, run_module):
    engine.answer = Outcome(True, dict(name='h1', status='Up'))
    result = run_module(host, dict(name='h1', address='10.77.0.1', cluster='demo',
                                   power_management=dict(agent='fence_ipmilan',
                                                         options=dict(ip='10.0.0.9',
                                                                      passwd='0ther-pw'))))
    assert engine.calls[0][2]['power_management']['options']['passwd'] == '0ther-pw'
    assert '0ther-pw' not in json.dumps(result)
    assert result['invocation']['module_args']['power_management']['options']['ip'] == '10.0.0.9'


def test_reinstalled_passes_re_keying_and_the_operators_host_keys(engine, run_module):
    engine.answer = Outcome(True, dict(name='h1', status='Up'))
    key = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq root@h1'
    run_module(host, dict(name='h1', state='reinstalled', enroll_certificate=True,
                          ssh_host_keys=[key]))
    assert engine.calls == [('hosts.reinstall', ('h1',), dict(
        force=False, activate=True, renew_certificate=False, enroll_certificate=True,
        ssh_host_keys=[key], timeout=600, check_mode=False))]
