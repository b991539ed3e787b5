"""The SMS providers' status callbacks: verified and read into one `StatusReport`. Pure: no I/O.

Twilio posts form-encoded `MessageSid`, `MessageStatus`, `ErrorCode`, … to the
`StatusCallback` URL of each send, signed with `X-Twilio-Signature` =
base64(HMAC-SHA1(auth token, the full URL it called + each POST field's name and
value, sorted by name)) (Twilio, "Webhooks security",
https://www.twilio.com/docs/usage/security#validating-requests). rbm-relay passes
`StatusCallback = <SMS_STATUS_CALLBACK_URL>?message_id=<id>`, so the message id
comes back in the query string, which the signature covers.

The signed gateway posts JSON `{"message_id", "id", "status", "error_code"?}`,
signed as the relay signs its requests to it (`sms.sign`), with the message id in
the key's place: `X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"v1:<t>:<message_id>:" + raw body)>`, refused more than SIGNATURE_TOLERANCE seconds
from our clock (the README's "The signed gateway's contract").

A status is one of Twilio's message statuses (model.SmsStatus), in either case.
"""

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, parse_qsl

from functions import sms
from functions.model import SmsStatus

SIGNATURE_TOLERANCE = 300  # seconds between a gateway callback's `t` and our clock, either way
_GATEWAY_SIGNATURE = re.compile(r"t=(\d{1,12}),v1=([0-9a-f]{64})")
_SID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class Refused(ValueError):
    """A callback not to act on: `status` 401 (unsigned, wrongly signed, stale) or 400 (malformed)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class StatusReport:
    message_id: str  # ours
    sms_id: str  # the provider's id of the SMS
    status: SmsStatus
    error_code: str | None  # e.g. "30003"; None when the provider gave none


def twilio_signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    """X-Twilio-Signature of a POST to `url` with form fields `params`: base64(HMAC-SHA1(token,
    url + name1 + value1 + name2 + value2 …)), the fields sorted by name (then value)."""
    signed = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def _status(value: object) -> SmsStatus:
    if not isinstance(value, str) or value.upper() not in SmsStatus.__members__:
        raise Refused(400, "status is not a known message status")
    return SmsStatus(value.upper())


def _sms_id(value: object) -> str:
    if not isinstance(value, str) or not _SID.fullmatch(value):
        raise Refused(400, "the SMS id is missing or not an id")
    return value


def _message_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise Refused(400, "message_id is missing")
    return value


def _error_code(value: object) -> str | None:
    if value in (None, ""):
        return None
    code = sms.error_code(value)
    if code is None:
        raise Refused(400, "error_code is not a short code")
    return code


def from_twilio(url: str, body: bytes, signature: str | None, token: str) -> StatusReport:
    """The report of a Twilio status callback that reached `url` (the public URL Twilio
    called, query string included) with form `body`; Refused 401 unless `signature` is
    Twilio's signature of them with `token`, 400 if the fields are not a status callback."""
    try:
        params = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "body is not form-encoded") from None
    if not (token and signature) or not hmac.compare_digest(
        twilio_signature(token, url, params).encode(), signature.strip().encode()
    ):
        raise Refused(401, "bad or missing X-Twilio-Signature")
    fields = dict(params)
    query = parse_qs(url.partition("?")[2])
    return StatusReport(
        message_id=_message_id(query.get("message_id", [None])[0]),
        sms_id=_sms_id(fields.get("MessageSid")),
        status=_status(fields.get("MessageStatus")),
        error_code=_error_code(fields.get("ErrorCode")),
    )


def from_gateway(body: bytes, signature: str | None, secret: str, now: float) -> StatusReport:
    """The report of the signed gateway's callback, JSON `body` with `X-Signature`
    `signature`; Refused 401 unless signed with `secret` within SIGNATURE_TOLERANCE of
    `now` (unix seconds), 400 if the body is not the callback's JSON."""
    match = _GATEWAY_SIGNATURE.fullmatch((signature or "").strip())
    if not match or not secret:
        raise Refused(401, "bad or missing X-Signature")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused(400, "body is not JSON") from None
    if not isinstance(payload, dict):
        raise Refused(400, "body is not a JSON object")
    message_id = _message_id(payload.get("message_id"))
    expected = sms.sign(secret.encode(), int(match[1]), message_id, body)
    if not hmac.compare_digest(expected.encode(), match[0].encode()):
        raise Refused(401, "bad or missing X-Signature")
    if abs(now - int(match[1])) > SIGNATURE_TOLERANCE:
        raise Refused(401, "X-Signature timestamp outside the tolerance")
    return StatusReport(
        message_id=message_id,
        sms_id=_sms_id(payload.get("id")),
        status=_status(payload.get("status")),
        error_code=_error_code(payload.get("error_code")),
    )
