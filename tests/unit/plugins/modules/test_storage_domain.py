# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.modules import storage_domain
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import Outcome


def test_present_passes_the_full_cluster_list(engine, run_module):
    engine.answer = Outcome(True, dict(name='data', clusters=['c1']), dict(before={}, after={}))
    result = run_module(storage_domain, dict(name='data', path='/srv/data', clusters=['c1'],
                                             _ansible_diff=True))
    assert engine.calls == [('storage_domains.ensure', ('data',), dict(
        type=None, path='/srv/data', export=None, clusters=['c1'], description=None,
        check_mode=False))]
    assert result['storage_domain']['clusters'] == ['c1'] and 'diff' in result


def test_nfs_options(engine, run_module):
    engine.answer = Outcome(False, dict(name='nfs1'))
    run_module(storage_domain, dict(name='nfs1', type='nfs', export='nas:/k', path='/var/lib/kestrel/mnt/k'))
    assert engine.calls[0][2]['type'] == 'nfs' and engine.calls[0][2]['export'] == 'nas:/k'


def test_absent(engine, run_module):
    engine.answer = Outcome(False, None)
    result = run_module(storage_domain, dict(name='data', state='absent'))
    assert engine.calls == [('storage_domains.remove', ('data',), dict(check_mode=False))]
    assert result['changed'] is False


def test_unknown_type_is_refused_before_the_engine(engine, run_module):
    result = run_module(storage_domain, dict(name='data', type='iscsi', path='/x'))
    assert result['failed'] is True and 'type' in result['msg'] and engine.calls == []
