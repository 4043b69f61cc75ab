"""Password hashes of local users: argon2id with argon2-cffi's default (RFC 9106) costs.

``DUMMY_HASH`` is verified against when the user does not exist, so a login for an
unknown name costs the same time as one for a known name (no enumeration by timing).
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["DUMMY_HASH", "hash_password", "needs_rehash", "verify_password"]

_HASHER = PasswordHasher()  # argon2id


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(hashed: str, password: str) -> bool:
    """Whether ``password`` matches; an empty or malformed hash matches nothing."""
    if not hashed:
        return False
    try:
        return _HASHER.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(hashed: str) -> bool:
    """Whether the hash was made with other costs than today's defaults."""
    return _HASHER.check_needs_rehash(hashed)


DUMMY_HASH = hash_password("kestrel: no such user")
