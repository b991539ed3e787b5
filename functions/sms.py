"""SMS providers behind one small interface, chosen by SMS_PROVIDER.

`twilio`: Twilio's Messages REST API. `webhook`: a JSON POST signed with
HMAC-SHA256 over a timestamp, the idempotency key and the body, for teams with
their own gateway (the contract is in the README, `SMS_WEBHOOK_URL`). A send
either went out (SENT), was refused for good (REJECTED), surely did not go out
or may have but can safely be repeated (TRANSIENT: retry later), or may have
gone out (UNKNOWN: never retried, so never twice).

Both providers' answers are read by the same rules (the README's "SMS
providers' answers" table gives the sources). Twilio takes no idempotency
key, and a gateway may ignore ours, so nothing that may have reached the
provider is sent again — unless the gateway declares it honours the key
(`SMS_WEBHOOK_IDEMPOTENT=true`: the same key within 24 h answers the first
result and sends nothing more), when a repeat cannot text twice:
- no answer: TRANSIENT only if the request surely never left
  (`transport.may_have_been_read`), else UNKNOWN (TRANSIENT if idempotent);
- 2xx: SENT;
- 429, 503: not processed (Twilio: "An API Request that receives an error 429
  response is never processed and is always safe to retry",
  https://www.twilio.com/docs/api/errors/20429; 503: "temporarily
  unavailable ... try again", https://www.twilio.com/docs/api/errors/20503):
  TRANSIENT, after the provider's `Retry-After` (held to MAX_RETRY_AFTER);
- other 4xx: REJECTED (the request is wrong, or the number refused: 21211
  invalid, 21610 unsubscribed);
- 500 and every other status: UNKNOWN, TRANSIENT if idempotent (Twilio:
  retrying a 500 on an SMS send "it is possible for a customer to receive
  multiple messages", https://www.twilio.com/docs/api/errors/20500; a 502 /
  504 comes from a proxy that may have passed the request on).
A result that may follow a delivered request says so (`may_have_sent`), so a
retry that runs out of attempts ends UNKNOWN, not FAILED.

An error names the status and the provider's error code, never the reply's
text: Twilio's 21211 message holds the phone number in full.
"""

import functools
import hashlib
import hmac
import ipaddress
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import requests

from functions import transport
from functions.config import env, sms_provider, sms_status_callback_url, sms_webhook_idempotent

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
    may_have_sent: bool = False  # the request may have been acted on although the answer says nothing clear


class Misconfigured(ValueError):
    """A provider's settings that cannot be used; the reason names the setting, never a secret."""


class Provider(Protocol):
    # Whether the provider honours our idempotency key (the message id): an ambiguous send may be repeated.
    idempotent: bool

    def send(self, to: str, text: str, message_id: str) -> SmsResult: ...


def _ambiguous(error: str, idempotent: bool) -> SmsResult:
    """A request the provider may have acted on: repeated later if the provider honours our key, else UNKNOWN."""
    return SmsResult(SmsOutcome.TRANSIENT if idempotent else SmsOutcome.UNKNOWN, error=error, may_have_sent=True)


def _post(session: requests.Session, url: str, id_field: str, idempotent: bool, **kwargs: Any) -> SmsResult:
    """POSTs once and sorts the outcome (see the module docstring)."""
    try:
        response = session.post(url, timeout=TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        if transport.may_have_been_read(exc):
            return _ambiguous(
                f"no answer after the request may have reached the provider: {type(exc).__name__}", idempotent
            )
        return SmsResult(SmsOutcome.TRANSIENT, error=f"provider unreachable: {type(exc).__name__}")
    return _answer(response, id_field, idempotent)


def _answer(response: requests.Response, id_field: str, idempotent: bool) -> SmsResult:
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
    return _ambiguous(error, idempotent)


def _error_code(response: requests.Response) -> str | None:
    """The `code` of a JSON error body (Twilio's `{"code", "message", "more_info",
    "status"}`, https://www.twilio.com/docs/usage/twilios-response; the webhook
    contract's `{"code", "error"}`), or None when absent or not code-shaped."""
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return None
    return error_code(code)


def error_code(value: object) -> str | None:
    """A provider's error code (a string or an integer) as recorded: short, never
    phone-shaped; None for anything else."""
    code = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return code if _CODE.fullmatch(code) else None


@dataclass(frozen=True)
class Lookup:
    """What the provider's own records say of an attempt: its SMS (`sms_id`), none
    (both None: proven absent), or nothing known (`error`: the lookup failed)."""

    sms_id: str | None = None
    error: str | None = None


LOOKUP_PAGES = 5  # pages of the Messages list read at most per lookup: a number gets few SMS a minute
LOOKUP_PAGE_SIZE = 50


class Twilio:
    """POST /2010-04-01/Accounts/{sid}/Messages.json, form-encoded, HTTP Basic auth.
    Twilio's Messages API takes no idempotency key, but its Messages list tells
    whether an ambiguous create made a message (`find`)."""

    idempotent = False

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

    def find(self, to: str, text: str, since: datetime) -> Lookup:
        """The message to `to` with body `text` created at or after `since`, from the Messages
        list (Twilio's Message resource reference, "Read multiple Message resources"): filtered
        by To, newest first, read page by page until a message older than `since`. Not
        filtered by DateSent: a message still queued has no date_sent yet."""
        url: str | None = self.url
        params: dict[str, Any] | None = {"To": to, "PageSize": LOOKUP_PAGE_SIZE}
        root = f"{urlsplit(self.url).scheme}://{urlsplit(self.url).netloc}"
        for _ in range(LOOKUP_PAGES):
            try:
                response = self.session.get(url or self.url, params=params, timeout=TIMEOUT)
            except requests.RequestException as exc:
                return Lookup(error=f"lookup failed: {type(exc).__name__}")
            if response.status_code != 200:
                code = _error_code(response)
                return Lookup(error=f"lookup answered {response.status_code}" + (f", code {code}" if code else ""))
            try:
                page = response.json()
                for message in page["messages"]:
                    if parsedate_to_datetime(message["date_created"]) < since:
                        return Lookup()
                    if message.get("body") == text and str(message.get("direction", "")).startswith("outbound"):
                        return Lookup(sms_id=str(message["sid"]))
                next_page = page.get("next_page_uri")
            except (ValueError, KeyError, TypeError):
                return Lookup(error="lookup answered a page it could not read")
            if not next_page:
                return Lookup()
            url, params = root + next_page, None
        return Lookup(error=f"lookup read {LOOKUP_PAGES} pages without reaching the attempt's time")

    def send(self, to: str, text: str, message_id: str) -> SmsResult:
        callback = status_callback(message_id)
        form = {"To": to, "Body": text, **self.sender, **({"StatusCallback": callback} if callback else {})}
        return _post(self.session, self.url, "sid", self.idempotent, data=form)


def status_callback(message_id: str) -> str | None:
    """The `StatusCallback` URL of the SMS of `message_id`: SMS_STATUS_CALLBACK_URL (receive_sms_status's
    public URL) with `?message_id=<id>`, which Twilio calls back and signs as it is; None when unset."""
    base = sms_status_callback_url()
    return f"{base}?{urlencode({'message_id': message_id})}" if base else None


SIGNATURE_VERSION = "v1"


def sign(secret: bytes, timestamp: int, key: str, body: bytes) -> str:
    """The `X-Signature` value of a request to the signed gateway (the README's contract):
    `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "v1:<timestamp>:<key>:" + body)>`, where
    `key` is the request's `Idempotency-Key` and `body` its raw bytes."""
    signed = f"{SIGNATURE_VERSION}:{timestamp}:{key}:".encode() + body
    return f"t={timestamp},{SIGNATURE_VERSION}=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


def _gateway_url(url: str) -> str:
    """`url` if a signed request may go there: https, or http to a loopback address; else Misconfigured."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        try:
            loopback = parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return url
    raise Misconfigured("SMS_WEBHOOK_URL must be an https:// URL (http:// only to a loopback address)")


class SignedWebhook:
    """POST {"to", "text", "message_id"} with `Idempotency-Key: <message_id>` and
    `X-Signature` (`sign`), signed anew at each try; answers are read as Twilio's are,
    and an ambiguous one is retried only when the gateway declares it honours the key
    (`SMS_WEBHOOK_IDEMPOTENT`). Misconfigured for a plain-http URL outside loopback, an
    empty secret or an unreadable SMS_WEBHOOK_IDEMPOTENT (the contract is in the README)."""

    def __init__(self) -> None:
        self.url = _gateway_url(env("SMS_WEBHOOK_URL"))
        self.secret = env("SMS_WEBHOOK_SECRET").encode()
        if not self.secret:
            raise Misconfigured("SMS_WEBHOOK_SECRET is empty")
        try:
            self.idempotent = sms_webhook_idempotent()
        except ValueError as exc:
            raise Misconfigured(str(exc)) from None
        self.session = requests.Session()

    def send(self, to: str, text: str, message_id: str) -> SmsResult:
        body = json.dumps({"to": to, "text": text, "message_id": message_id}).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": message_id,
            "X-Signature": sign(self.secret, int(time.time()), message_id, body),
        }
        return _post(self.session, self.url, "id", self.idempotent, data=body, headers=headers)


PROVIDERS: dict[str, Callable[[], Provider]] = {"twilio": Twilio, "webhook": SignedWebhook}


@functools.cache
def provider() -> Provider | None:
    """The configured provider, built once per instance; None if SMS_PROVIDER is unset.
    Raises Misconfigured (each call, until fixed) when its settings cannot be used."""
    name = sms_provider()
    return PROVIDERS[name]() if name else None
