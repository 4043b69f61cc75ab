# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Fixtures: the fake engine in place of engine_lib, and a module runner."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils import basic
from ansible_collections.kestrel.virt.plugins.module_utils import _kestrel
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import (
    FakeEngine,
    FakeError,
)

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core < 2.19
    from contextlib import contextmanager
    from unittest import mock

    @contextmanager
    def patch_module_args(args):
        payload = json.dumps(dict(ANSIBLE_MODULE_ARGS=args)).encode()
        with mock.patch.object(basic, '_ANSIBLE_ARGS', payload):
            yield


@pytest.fixture
def engine(monkeypatch):
    fake = FakeEngine()
    monkeypatch.setattr(_kestrel, 'Engine', fake)
    monkeypatch.setattr(_kestrel, 'RemoteEngine', fake)
    monkeypatch.setattr(_kestrel, 'KestrelError', FakeError)
    monkeypatch.setattr(_kestrel, 'ENGINE_IMPORT_ERROR', None)
    for name in ('ENGINE_DIR', 'DB_URL', 'ENGINE_URL', 'USERNAME', 'PASSWORD', 'TOKEN', 'CA_FILE'):
        monkeypatch.delenv('KESTREL_' + name, raising=False)
    return fake


@pytest.fixture
def run_module(capsys):
    """Run a module's main() with these arguments; return the JSON it exits with."""
    def run(module, args):
        with patch_module_args(args):
            with pytest.raises(SystemExit):
                module.main()
        return json.loads(capsys.readouterr().out)
    return run
