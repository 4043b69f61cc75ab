# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A fake engine for the modules' own logic.

It records which engine call a module makes, with which arguments, and
answers with a canned outcome or error. It tests argument handling and result
mapping only; the real engine is exercised by the system tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Outcome:
    changed: bool
    entity: object
    diff: object = None


class FakeError(Exception):
    """Shaped like engine_lib.protocol.errors.KestrelError."""

    def __init__(self, code, message, **details):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details

    def to_dict(self):
        return dict(code=self.code, message=self.message, details=self.details)


@dataclass
class FakeEngine:
    """Answers every service call with ``answer`` (or raises it) and records the call."""

    answer: object = None
    calls: list = field(default_factory=list)
    opened_with: dict = field(default_factory=dict)
    closed: bool = False

    def open(self, engine_dir=None, db_url=None):
        self.opened_with = dict(engine_dir=engine_dir, db_url=db_url)
        return self

    def connect(self, url, username=None, password=None, token=None, ca_file=None):
        """As RemoteEngine.connect: the same fake serves both modes."""
        self.opened_with = dict(engine_url=url, username=username, password=password,
                                token=token, ca_file=ca_file)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True

    def __getattr__(self, service):
        if service.startswith('_'):
            raise AttributeError(service)
        return _Service(self, service)


@dataclass
class _Service:
    engine: FakeEngine
    name: str

    def __getattr__(self, method):
        def call(*args, **kwargs):
            self.engine.calls.append(('%s.%s' % (self.name, method), args, kwargs))
            if isinstance(self.engine.answer, Exception):
                raise self.engine.answer
            return self.engine.answer
        return call
