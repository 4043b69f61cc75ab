"""The text of API tokens: ``kst_<id>_<secret>``.

The id finds the row, the secret proves possession; only the secret's sha256 is
stored. A 256-bit random secret cannot be guessed, so a slow hash adds nothing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid

__all__ = ["new_token", "parse", "secret_digest"]

PREFIX = "kst_"
# A uuid4 id (as model.new_id makes them) and 43 urlsafe base64 characters (32 bytes).
_TOKEN = re.compile(r"kst_([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
                    r"_([A-Za-z0-9_-]{43})")


def new_token() -> tuple[str, str, str]:
    """A new (id, secret, text)."""
    token_id = str(uuid.uuid4())
    secret = secrets.token_urlsafe(32)
    return token_id, secret, f"{PREFIX}{token_id}_{secret}"


def parse(text: str) -> tuple[str, str]:
    """(id, secret) of a token text; ValueError on anything else."""
    match = _TOKEN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("not a kestrel API token")
    return match.group(1), match.group(2)


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
