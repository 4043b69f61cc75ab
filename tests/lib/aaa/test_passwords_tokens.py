"""Password hashes and the API token text format (engine_lib.aaa)."""

import pytest

from engine_lib.aaa import passwords, tokens


def test_a_password_hash_is_argon2id_and_verifies_only_its_password():
    hashed = passwords.hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert passwords.verify_password(hashed, "correct horse battery")
    assert not passwords.verify_password(hashed, "correct horse batterY")
    assert not passwords.verify_password("", "anything")
    assert not passwords.verify_password("not a hash", "anything")
    assert not passwords.verify_password(passwords.DUMMY_HASH, "")


def test_token_text_round_trips_and_keeps_only_a_digest():
    token_id, secret, text = tokens.new_token()
    assert text == f"kst_{token_id}_{secret}" and len(secret) == 43  # 256 bits
    assert tokens.parse(text) == (token_id, secret)
    assert tokens.secret_digest(secret) != secret and len(tokens.secret_digest(secret)) == 64
    assert tokens.new_token()[1] != secret


@pytest.mark.parametrize("text", [
    "", "kst_", "Bearer kst_x", "kst_not-an-id_" + "a" * 43, None, 42,
    "kst_" + "0" * 36 + "_" + "a" * 43,
    "kst_12345678-1234-1234-1234-123456789abc_" + "a" * 42,
    "kst_12345678-1234-1234-1234-123456789abc_" + "a" * 43 + "\n",
    "kst_12345678-1234-1234-1234-123456789abc_" + "a" * 42 + "=",
])
def test_a_malformed_token_is_a_value_error(text):
    with pytest.raises(ValueError):
        tokens.parse(text)
