"""RBM webhook signatures: base64(HMAC-SHA512(client token, decoded message.data)).

The scheme has no timestamp, so there is no replay window to check here;
duplicate suppression downstream is the replay defence.
"""

import base64
import binascii
import hashlib
import hmac

# An HMAC-SHA512 digest, which the header carries in base64.
DIGEST_BYTES = hashlib.sha512().digest_size


def sign(token: str, data: bytes) -> str:
    return base64.b64encode(hmac.new(token.encode(), data, hashlib.sha512).digest()).decode()


def well_formed(signature: str | None) -> bool:
    """Whether an `X-Goog-Signature` value could be a signature at all: the base64 of
    a 64-byte digest. Checked before a body is read, so strangers cost no parsing."""
    if not signature:
        return False
    try:
        return len(base64.b64decode(signature.strip(), validate=True)) == DIGEST_BYTES
    except (binascii.Error, ValueError):
        return False


def verify(signature: str | None, data: bytes, tokens: list[str]) -> bool:
    """True if any configured token signed `data`; constant time per token."""
    if not signature:
        return False
    given = signature.strip().encode()
    return any(hmac.compare_digest(sign(t, data).encode(), given) for t in tokens)
