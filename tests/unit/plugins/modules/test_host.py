# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.modules import host

from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import FakeError, Outcome


def test_present_registers_with_the_default_agent_port(engine, run_module):
    engine.answer = Outcome(True, dict(name='h1', address='10.77.0.1', status='Up'))
    result = run_module(host, dict(name='h1', address='10.77.0.1', cluster='demo'))
    assert engine.calls == [('hosts.ensure', ('h1',), dict(
        address='10.77.0.1', cluster='demo', port=54321, check_mode=False))]
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
