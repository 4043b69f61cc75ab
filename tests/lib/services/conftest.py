"""Fixtures for the services' tests."""

import pytest
from argon2 import PasswordHasher

from engine_lib.aaa import passwords


@pytest.fixture
def cheap_argon2(monkeypatch):
    """argon2id with the least work, so tests spend their time on the logic; a hash
    carries its parameters, so verifying runs the production code path."""
    monkeypatch.setattr(passwords, "_HASHER",
                        PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    monkeypatch.setattr(passwords, "DUMMY_HASH", passwords.hash_password("dummy"))
