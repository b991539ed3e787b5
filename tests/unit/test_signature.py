"""Signature vectors computed independently of the code under test."""

import base64
import hashlib
import hmac

import pytest

from functions import signature


def expected(token: str, data: bytes) -> str:
    return base64.b64encode(hmac.new(token.encode(), data, hashlib.sha512).digest()).decode()


PAYLOADS = [b"{}", b'{"senderPhoneNumber":"+15550001111","text":"hi"}', "é€✓".encode(), b"x" * 10_000]
TOKENS = ["token-a", "another token with spaces", "t" * 200]


@pytest.mark.parametrize("data", PAYLOADS)
@pytest.mark.parametrize("token", TOKENS)
def test_sign_matches_hmac_sha512_base64(token, data):
    assert signature.sign(token, data) == expected(token, data)
    assert signature.verify(expected(token, data), data, [token])


def test_rotation_accepts_either_token_of_a_pair():
    old, new = "old-token", "new-token"
    data = b'{"eventType":"DELIVERED"}'
    assert signature.verify(expected(old, data), data, [old, new])
    assert signature.verify(expected(new, data), data, [old, new])
    assert not signature.verify(expected("third", data), data, [old, new])


@pytest.mark.parametrize("given", [None, "", "not-base64", expected("token-a", b"other")])
def test_rejects_missing_wrong_or_foreign_signatures(given):
    assert not signature.verify(given, b"{}", ["token-a"])


def test_signature_is_over_decoded_data_not_its_base64():
    data = b'{"a":1}'
    assert not signature.verify(expected("k", base64.b64encode(data)), data, ["k"])


def test_no_tokens_configured_rejects_everything():
    assert not signature.verify(expected("k", b"{}"), b"{}", [])


@pytest.mark.parametrize(
    "given, well_formed",
    [
        (expected("k", b"{}"), True),
        (f"  {expected('k', b'{}')}\n", True),
        (None, False),
        ("", False),
        ("not base64!", False),
        (base64.b64encode(b"x" * 63).decode(), False),
        (base64.b64encode(b"x" * 65).decode(), False),
        (expected("k", b"{}").rstrip("="), False),
    ],
)
def test_a_well_formed_signature_is_the_base64_of_64_bytes(given, well_formed):
    assert signature.well_formed(given) is well_formed
