# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.modules import nic
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import Outcome


def test_only_the_settings_given_reach_the_engine(engine, run_module):
    engine.answer = Outcome(True, dict(vm='web1', name='nic2', mac='56:6f:4b:00:00:01',
                                       hotplugged=True, next_run=False))
    result = run_module(nic, dict(vm='web1', name='nic2', network='vms',
                                  bandwidth=dict(inbound=dict(average=1000))))
    assert engine.calls == [('vm_devices.nic', ('web1', 'nic2'), dict(
        state='present', settings=dict(network='vms', bandwidth=dict(inbound=dict(average=1000))),
        check_mode=False))]
    assert result['nic']['hotplugged'] is True


def test_absent(engine, run_module):
    engine.answer = Outcome(True, dict(vm='web1', name='nic2'))
    run_module(nic, dict(vm='web1', name='nic2', state='absent'))
    assert engine.calls[0][2] == dict(state='absent', settings={}, check_mode=False)


def test_bad_model_is_refused_before_the_engine(engine, run_module):
    result = run_module(nic, dict(vm='web1', name='nic2', model='ne2000'))
    assert result['failed'] is True and 'model' in result['msg'] and engine.calls == []
