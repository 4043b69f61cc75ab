# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""What every module shares through module_utils/_kestrel: connection, check
mode, diff, typed errors and the missing-library message."""

from __future__ import annotations

import pytest
from ansible_collections.kestrel.virt.plugins.module_utils import _kestrel
from ansible_collections.kestrel.virt.plugins.modules import cluster
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import (
    FakeError,
    Outcome,
)

ENTITY = dict(id='c-1', name='demo', virt_type='qemu')


def test_connection_options_reach_the_engine_and_it_is_closed(engine, run_module):
    engine.answer = Outcome(False, ENTITY)
    run_module(cluster, dict(name='demo', engine_dir='/srv/engine', db_url='sqlite:////tmp/e.db'))
    assert engine.opened_with == dict(engine_dir='/srv/engine', db_url='sqlite:////tmp/e.db')
    assert engine.closed


def test_connection_falls_back_to_the_environment(engine, run_module, monkeypatch):
    monkeypatch.setenv('KESTREL_ENGINE_DIR', '/from/env')
    monkeypatch.setenv('KESTREL_DB_URL', 'postgresql+psycopg://kestrel:secret@db/kestrel')
    engine.answer = Outcome(False, ENTITY)
    result = run_module(cluster, dict(name='demo'))
    assert engine.opened_with == dict(engine_dir='/from/env',
                                      db_url='postgresql+psycopg://kestrel:secret@db/kestrel')
    assert 'secret' not in repr(result)


def test_db_url_is_never_echoed_back(engine, run_module):
    engine.answer = Outcome(False, ENTITY)
    result = run_module(cluster, dict(name='demo', db_url='postgresql+psycopg://u:pw@db/k'))
    assert result['invocation']['module_args']['db_url'] == 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER'


def test_check_mode_is_passed_down_not_simulated(engine, run_module):
    engine.answer = Outcome(True, ENTITY)
    result = run_module(cluster, dict(name='demo', _ansible_check_mode=True))
    assert engine.calls[0][2]['check_mode'] is True
    assert result['changed'] is True
    assert result['cluster'] == ENTITY


def test_diff_is_returned_only_in_diff_mode(engine, run_module):
    engine.answer = Outcome(True, ENTITY, dict(before={}, after=ENTITY))
    assert 'diff' not in run_module(cluster, dict(name='demo'))
    result = run_module(cluster, dict(name='demo', _ansible_diff=True))
    assert result['diff'] == dict(before={}, after=ENTITY)


def test_typed_engine_error_becomes_a_failure_naming_the_cause(engine, run_module):
    engine.answer = FakeError('Conflict', "cluster 'demo' still has 1 host(s) and 0 VM(s)",
                              hosts=['h1'], vms=[])
    result = run_module(cluster, dict(name='demo', state='absent'))
    assert result['failed'] is True
    assert result['msg'] == "cluster 'demo' still has 1 host(s) and 0 VM(s)"
    assert result['error'] == dict(code='Conflict', message=result['msg'],
                                   details=dict(hosts=['h1'], vms=[]))
    assert engine.closed


def test_missing_engine_library_names_the_package(engine, run_module, monkeypatch):
    monkeypatch.setattr(_kestrel, 'ENGINE_IMPORT_ERROR', 'Traceback: No module named engine_lib')
    result = run_module(cluster, dict(name='demo'))
    assert result['failed'] is True
    assert 'kestrel-engine' in result['msg']
    assert engine.calls == []


def test_drop_unset_removes_what_ansible_filled_with_none():
    given = dict(a=None, b=[dict(c=None, d=1)], e=dict(f=None), g=False, h='')
    assert _kestrel.drop_unset(given) == dict(b=[dict(d=1)], e={}, g=False, h='')


def test_awx_credential_files_become_a_private_engine_directory(engine, run_module, monkeypatch, tmp_path):
    import os

    seen = {}
    for var, name in _kestrel.PKI_ENV:
        (tmp_path / name).write_text(name)
        monkeypatch.setenv(var, str(tmp_path / name))
    original_open = engine.open

    def open_and_look(engine_dir=None, db_url=None):
        seen.update((name, open(os.path.join(engine_dir, 'pki', name)).read())
                    for _var, name in _kestrel.PKI_ENV)
        return original_open(engine_dir=engine_dir, db_url=db_url)

    monkeypatch.setattr(engine, 'open', open_and_look)
    engine.answer = Outcome(False, ENTITY)
    run_module(cluster, dict(name='demo', db_url='postgresql+psycopg://k@db/k'))
    assert seen == {'ca.pem': 'ca.pem', 'engine.pem': 'engine.pem', 'engine.key': 'engine.key'}
    assert not os.path.exists(engine.opened_with['engine_dir'])  # removed after the task


REMOTE = dict(engine_url='https://engine.example.com:8443', ca_file='/etc/kestrel/ca.pem')


def test_engine_url_selects_the_api_with_a_token(engine, run_module):
    engine.answer = Outcome(False, ENTITY)
    result = run_module(cluster, dict(REMOTE, name='demo', token='kst_1_secret'))
    assert engine.opened_with == dict(REMOTE, username=None, password=None, token='kst_1_secret')
    assert engine.closed
    assert 'kst_1_secret' not in repr(result)


def test_remote_options_fall_back_to_the_environment(engine, run_module, monkeypatch):
    monkeypatch.setenv('KESTREL_ENGINE_URL', REMOTE['engine_url'])
    monkeypatch.setenv('KESTREL_USERNAME', 'alice')
    monkeypatch.setenv('KESTREL_PASSWORD', 'correct horse battery')
    monkeypatch.setenv('KESTREL_CA_FILE', REMOTE['ca_file'])
    engine.answer = Outcome(False, ENTITY)
    result = run_module(cluster, dict(name='demo'))
    assert engine.opened_with == dict(REMOTE, username='alice', password='correct horse battery',
                                      token=None)
    assert 'correct horse' not in repr(result)


def test_remote_mode_needs_no_engine_library_beyond_the_client(engine, run_module, monkeypatch):
    import sys
    monkeypatch.setattr(_kestrel, 'Engine', None)
    monkeypatch.setitem(sys.modules, 'engine_lib.engine', None)  # any import of it fails
    engine.answer = Outcome(False, ENTITY)
    result = run_module(cluster, dict(REMOTE, name='demo', token='kst_2_abc'))
    assert result['changed'] is False and engine.calls


def test_local_mode_without_the_engine_library_says_so(engine, run_module, monkeypatch):
    import sys
    monkeypatch.setattr(_kestrel, 'Engine', None)
    monkeypatch.setitem(sys.modules, 'engine_lib.engine', None)
    result = run_module(cluster, dict(name='demo', engine_dir='/srv/engine'))
    assert result['failed'] is True
    assert 'local mode: engine_dir/db_url' in result['msg']


@pytest.mark.parametrize('args, env, message', [
    (dict(engine_url='https://e', token='kst_2_abc', engine_dir='/srv/e'), {},
     'engine_url/token (the engine API) and engine_dir (the engine host'),
    (dict(token='kst_2_abc'), {'KESTREL_ENGINE_URL': 'https://e', 'KESTREL_DB_URL': 'sqlite://'},
     'engine_url/token (the engine API) and db_url'),
    (dict(username='alice', password='correct horse battery'), {},
     'username/password given without engine_url'),
    (dict(engine_url='https://e'), {}, 'engine_url needs token, or username and password'),
    (dict(engine_url='https://e', username='alice'), {},
     'engine_url needs token, or username and password'),
    (dict(engine_url='https://e', username='alice', password='x' * 12, token='kst_2_abc'), {},
     'token and username/password are mutually exclusive'),
])
def test_mixed_or_incomplete_connections_fail_naming_the_options(
        engine, run_module, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_module(cluster, dict(args, name='demo'))
    assert result['failed'] is True
    assert message in result['msg']
    assert engine.calls == []
