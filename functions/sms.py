"""SMS providers behind one small interface, chosen by SMS_PROVIDER.

`twilio`: Twilio's Messages REST API. `webhook`: a JSON POST signed with
HMAC-SHA256, for teams with their own gateway. A send either went out
(SENT), was refused for good (REJECTED), surely did not go out (TRANSIENT:
retry later), or may have gone out (UNKNOWN: never retried, so never twice).

Both providers' answers are read by the same rules (the README's "SMS
providers' answers" table gives the sources). Twilio takes no idempotency
key, and a gateway written by someone else may ignore ours, so nothing that
may have reached the provider is sent again:
- no answer: TRANSIENT only if the request surely never left
  (`transport.may_have_been_read`), else UNKNOWN;
- 2xx: SENT;
- 429, 503: not processed (Twilio: "An API Request that receives an error 429
  response is never processed and is always safe to retry",
  https://www.twilio.com/docs/api/errors/20429; 503: "temporarily
  unavailable ... try again", https://www.twilio.com/docs/api/errors/20503):
  TRANSIENT, after the provider's `Retry-After` (held to MAX_RETRY_AFTER);
- other 4xx: REJECTED (the request is wrong, or the number refused: 21211
  invalid, 21610 unsubscribed);
- 500 and every other status: UNKNOWN (Twilio: retrying a 500 on an SMS send
  "it is possible for a customer to receive multiple messages",
  https://www.twilio.com/docs/api/errors/20500; a 502 / 504 comes from a
  proxy that may have passed the request on).

An error names the status and the provider's error code, never the reply's
text: Twilio's 21211 message holds the phone number in full.
"""

import functools
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import requests

from functions import transport
from functions.config import env, sms_provider

TIMEOUT = (3.05, 15)  # connect, read
MAX_RETRY_AFTER = 600.0  # seconds; a longer Retry-After is held to this
# An error code worth recording: short, and never phone-shaped (seven digits in a row).
_CODE = re.compile(r"(?!.*\d{7})[A-Za-z0-9_.-]{1,40}")


class SmsOutcome(StrEnum):
    SENT = "SENT"
    REJECTED = "REJECTED"
    TRANSIENT = "TRANSIENT"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class SmsResult:
    outcome: SmsOutcome
    provider_id: str | None = None
    error: str | None = None  # e.g. "provider 400, code 21211": status and code, never the reply's text
    retry_after: float | None = None  # seconds the provider asked to wait before the next try


class Provider(Protocol):
    def send(self, to: str, text: str, message_id: str) -> SmsResult: ...


def _post(session: requests.Session, url: str, id_field: str, **kwargs: Any) -> SmsResult:
    """POSTs once and sorts the outcome (see the module docstring)."""
    try:
        response = session.post(url, timeout=TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        if transport.may_have_been_read(exc):
            return SmsResult(
                SmsOutcome.UNKNOWN,
                error=f"no answer after the request may have reached the provider: {type(exc).__name__}",
            )
        return SmsResult(SmsOutcome.TRANSIENT, error=f"provider unreachable: {type(exc).__name__}")
    return _answer(response, id_field)


def _answer(response: requests.Response, id_field: str) -> SmsResult:
    """The outcome an answer means; `id_field` names the provider's message id in a 2xx JSON body."""
    status = response.status_code
    if 200 <= status < 300:
        try:
            return SmsResult(SmsOutcome.SENT, provider_id=str(response.json()[id_field]))
        except (ValueError, KeyError, TypeError):
            return SmsResult(SmsOutcome.SENT, error="sent, but the provider's answer had no id")
    code = _error_code(response)
    error = f"provider {status}" + (f", code {code}" if code else "")
    if status in transport.NOT_PROCESSED:
        return SmsResult(
            SmsOutcome.TRANSIENT, error=error, retry_after=transport.retry_after(response, MAX_RETRY_AFTER)
        )
    if 400 <= status < 500:
        return SmsResult(SmsOutcome.REJECTED, error=error)
    return SmsResult(SmsOutcome.UNKNOWN, error=error)


def _error_code(response: requests.Response) -> str | None:
    """The `code` of a JSON error body (Twilio's `{"code", "message", "more_info",
    "status"}`, https://www.twilio.com/docs/usage/twilios-response; the webhook
    contract's `{"code", "error"}`), or None when absent or not code-shaped."""
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return None
    code = str(code) if isinstance(code, (str, int)) and not isinstance(code, bool) else ""
    return code if _CODE.fullmatch(code) else None


class Twilio:
    """POST /2010-04-01/Accounts/{sid}/Messages.json, form-encoded, HTTP Basic auth."""

    def __init__(self) -> None:
        self.sid = env("TWILIO_ACCOUNT_SID")
        self.sender = (
            {"From": env("TWILIO_FROM_NUMBER")}
            if env("TWILIO_FROM_NUMBER")
            else {"MessagingServiceSid": env("TWILIO_MESSAGING_SERVICE_SID")}
        )
        self.url = f"{env('TWILIO_API_BASE', 'https://api.twilio.com').rstrip('/')}/2010-04-01/Accounts/{self.sid}/Messages.json"
        self.session = requests.Session()
        self.session.auth = (self.sid, env("TWILIO_AUTH_TOKEN"))

    def send(self, to: str, text: str, message_id: str) -> SmsResult:
        return _post(self.session, self.url, "sid", data={"To": to, "Body": text, **self.sender})


class SignedWebhook:
    """POST {"to", "text", "message_id"} with `X-Signature: sha256=<hex HMAC of the body>`
    and `Idempotency-Key: <message_id>`; answers are read as Twilio's are, since a
    gateway may ignore the key (the contract is in the README)."""

    def __init__(self) -> None:
        self.url, self.secret = env("SMS_WEBHOOK_URL"), env("SMS_WEBHOOK_SECRET").encode()
        self.session = requests.Session()

    def send(self, to: str, text: str, message_id: str) -> SmsResult:
        body = json.dumps({"to": to, "text": text, "message_id": message_id}).encode()
        signature = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-Signature": signature, "Idempotency-Key": message_id}
        return _post(self.session, self.url, "id", data=body, headers=headers)


PROVIDERS: dict[str, Callable[[], Provider]] = {"twilio": Twilio, "webhook": SignedWebhook}


@functools.cache
def provider() -> Provider | None:
    """The configured provider, built once per instance; None if SMS_PROVIDER is unset."""
    name = sms_provider()
    return PROVIDERS[name]() if name else None
