"""SMS providers behind one small interface, chosen by SMS_PROVIDER.

`twilio`: Twilio's Messages REST API. `webhook`: a JSON POST signed with
HMAC-SHA256, for teams with their own gateway. A send either went out
(SENT), was refused for good (REJECTED), surely did not go out (TRANSIENT:
retry later), or may have gone out (UNKNOWN: never retried, so never twice).
"""

import functools
import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import requests

from functions.config import env, sms_provider

TIMEOUT = (3.05, 15)  # connect, read


class SmsOutcome(StrEnum):
    SENT = "SENT"
    REJECTED = "REJECTED"
    TRANSIENT = "TRANSIENT"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class SmsResult:
    outcome: SmsOutcome
    provider_id: str | None = None
    error: str | None = None


class Provider(Protocol):
    def send(self, to: str, text: str, message_id: str) -> SmsResult: ...


def _post(session: requests.Session, url: str, id_field: str, **kwargs) -> SmsResult:
    """POSTs and sorts the answer: a request that reached the provider but got no
    answer may have sent the SMS, so it is UNKNOWN, not TRANSIENT."""
    try:
        response = session.post(url, timeout=TIMEOUT, **kwargs)
    except (requests.ConnectionError, requests.ConnectTimeout) as exc:
        if not isinstance(exc, requests.ReadTimeout):
            return SmsResult(SmsOutcome.TRANSIENT, error=f"provider unreachable: {type(exc).__name__}")
        return SmsResult(SmsOutcome.UNKNOWN, error="provider did not answer in time")
    except requests.RequestException as exc:
        return SmsResult(SmsOutcome.UNKNOWN, error=f"provider call failed: {type(exc).__name__}")
    error = f"provider {response.status_code}: {response.text[:200]}"
    if response.status_code >= 500 or response.status_code == 429:
        return SmsResult(SmsOutcome.TRANSIENT, error=error)
    if response.status_code >= 400:
        return SmsResult(SmsOutcome.REJECTED, error=error)
    try:
        return SmsResult(SmsOutcome.SENT, provider_id=str(response.json()[id_field]))
    except (ValueError, KeyError, TypeError):
        return SmsResult(SmsOutcome.SENT, error="sent, but the provider's answer had no id")


class Twilio:
    """POST /2010-04-01/Accounts/{sid}/Messages.json, form-encoded, HTTP Basic auth."""

    def __init__(self):
        self.sid = env("TWILIO_ACCOUNT_SID")
        self.sender = {"From": env("TWILIO_FROM_NUMBER")} if env("TWILIO_FROM_NUMBER") else {
            "MessagingServiceSid": env("TWILIO_MESSAGING_SERVICE_SID")}
        self.url = f"{env('TWILIO_API_BASE', 'https://api.twilio.com').rstrip('/')}/2010-04-01/Accounts/{self.sid}/Messages.json"
        self.session = requests.Session()
        self.session.auth = (self.sid, env("TWILIO_AUTH_TOKEN"))

    def send(self, to: str, text: str, message_id: str) -> SmsResult:
        return _post(self.session, self.url, "sid", data={"To": to, "Body": text, **self.sender})


class SignedWebhook:
    """POST {"to", "text", "message_id"} with `X-Signature: sha256=<hex HMAC of the body>`;
    the gateway can use message_id to drop a duplicate."""

    def __init__(self):
        self.url, self.secret = env("SMS_WEBHOOK_URL"), env("SMS_WEBHOOK_SECRET").encode()
        self.session = requests.Session()

    def send(self, to: str, text: str, message_id: str) -> SmsResult:
        body = json.dumps({"to": to, "text": text, "message_id": message_id}).encode()
        signature = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-Signature": signature, "Idempotency-Key": message_id}
        return _post(self.session, self.url, "id", data=body, headers=headers)


PROVIDERS = {"twilio": Twilio, "webhook": SignedWebhook}


@functools.cache
def provider() -> Provider | None:
    """The configured provider, built once per instance; None if SMS_PROVIDER is unset."""
    name = sms_provider()
    return PROVIDERS[name]() if name else None
