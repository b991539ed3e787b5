"""RBM webhook signatures: base64(HMAC-SHA512(client token, decoded message.data)).

The scheme has no timestamp, so there is no replay window to check here;
duplicate suppression downstream is the replay defence.
"""

import base64
import hashlib
import hmac


def sign(token: str, data: bytes) -> str:
    return base64.b64encode(hmac.new(token.encode(), data, hashlib.sha512).digest()).decode()


def verify(signature: str | None, data: bytes, tokens: list[str]) -> bool:
    """True if any configured token signed `data`; constant time per token."""
    if not signature:
        return False
    given = signature.strip().encode()
    return any(hmac.compare_digest(sign(t, data).encode(), given) for t in tokens)
