"""The SMS providers' clients against the fake providers on loopback: what
each answer and each failure of the exchange means (README, "SMS providers'
answers"), and that an error never carries the reply's text."""

import hashlib
import hmac
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from functions import sms
from functions.sms import SmsOutcome
from local.fake_sms import FakeSmsWebhook, FakeTwilio
from local.fakehttp import FakeServer

SID, TOKEN, SECRET = "AC" + "3" * 32, "twilio-token", "webhook-secret"
PHONE = "+15550000001"


def _twilio(monkeypatch, url):
    for name, value in {
        "TWILIO_ACCOUNT_SID": SID,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_MESSAGING_SERVICE_SID": "",
        "TWILIO_API_BASE": url,
    }.items():
        monkeypatch.setenv(name, value)
    return sms.Twilio()


def _webhook(monkeypatch, url, idempotent=""):
    monkeypatch.setenv("SMS_WEBHOOK_URL", url + "/send")
    monkeypatch.setenv("SMS_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("SMS_WEBHOOK_IDEMPOTENT", idempotent)
    return sms.SignedWebhook()


@pytest.fixture(params=["twilio", "webhook"])
def provider(request, monkeypatch):
    """(fake, client) for either provider."""
    if request.param == "twilio":
        with FakeTwilio(SID, TOKEN) as fake:
            yield fake, _twilio(monkeypatch, fake.url)
    else:
        with FakeSmsWebhook(SECRET) as fake:
            yield fake, _webhook(monkeypatch, fake.url)


def send(client, to=PHONE):
    return client.send(to, "your code is 1234", "msg-1")


def test_an_accepted_send_is_sent_with_the_provider_id(provider):
    fake, client = provider
    result = send(client)
    assert (result.outcome, result.provider_id) == (SmsOutcome.SENT, fake.sent[0]["provider_id"])


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "close"])
def test_a_connection_dropped_after_the_request_was_read_is_unknown(provider, reset):
    fake, client = provider
    fake.drop(reset=reset)
    result = send(client)
    assert result.outcome is SmsOutcome.UNKNOWN, result
    assert fake.received == 1 and fake.count() == 1  # the provider has it: a retry would be a second SMS


def test_a_refused_connection_is_transient(monkeypatch):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"  # nothing listens: the request never left
    result = send(_twilio(monkeypatch, url))
    assert result.outcome is SmsOutcome.TRANSIENT and result.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_server_error_that_may_have_been_acted_on_is_unknown(provider, status):
    fake, client = provider
    fake.script([status])
    result = send(client)
    assert result.outcome is SmsOutcome.UNKNOWN and result.error.startswith(f"provider {status}")
    assert fake.count() == 1  # the fake took the worst case: it sent


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("asked, waits", [("7", 7.0), ("86400", 600.0), (None, None)])
def test_not_processed_is_transient_with_the_bounded_wait(provider, status, asked, waits):
    fake, client = provider
    fake.set_retry_after(asked)
    fake.script([status])
    result = send(client)
    assert (result.outcome, result.retry_after) == (SmsOutcome.TRANSIENT, waits)
    assert fake.count() == 0


def test_twilio_invalid_number_is_rejected_with_its_code_and_without_the_number(monkeypatch):
    with FakeTwilio(SID, TOKEN) as fake:
        fake.script([400])
        result = send(_twilio(monkeypatch, fake.url))
    assert (result.outcome, result.error) == (SmsOutcome.REJECTED, "provider 400, code 21211")


def test_twilio_auth_failure_is_rejected_with_its_code(monkeypatch):
    with FakeTwilio(SID, "another-token") as fake:
        result = send(_twilio(monkeypatch, fake.url))
    assert (result.outcome, result.error) == (SmsOutcome.REJECTED, "provider 401, code 20003")


def test_gateway_refusal_is_rejected_with_its_code_and_without_the_number(monkeypatch):
    with FakeSmsWebhook(SECRET) as fake:
        result = send(_webhook(monkeypatch, fake.url), to="0155")
    assert (result.outcome, result.error) == (SmsOutcome.REJECTED, "provider 400, code invalid_to")


class _Proxy(FakeServer):
    """Answers every request with the same status and body, as a proxy in front of a gateway might."""

    def __init__(self, status, body):
        super().__init__()
        self.answer = status, body

    def handle(self, request):
        return self.answer


@pytest.mark.parametrize(
    "body, error",
    [
        ({"code": PHONE, "error": "x"}, "provider 502"),  # a phone-shaped code is not recorded
        ({"code": "155500000012"}, "provider 502"),
        ("<html>Bad Gateway</html>", "provider 502"),
        ({"code": 20500, "message": f"failed for {PHONE}"}, "provider 502, code 20500"),
    ],
)
def test_only_a_code_shaped_code_is_recorded(monkeypatch, body, error):
    with _Proxy(502, body) as proxy:
        result = send(_webhook(monkeypatch, proxy.url))
    assert (result.outcome, result.error) == (SmsOutcome.UNKNOWN, error)


# The signed gateway: replay-resistant signatures, idempotent retries, settings refused at start-up.


class _Recorder(FakeServer):
    """Answers 200 and keeps each request's headers and body."""

    def __init__(self):
        super().__init__()
        self.requests = []

    def handle(self, request):
        self.requests.append(request)
        return 200, {"id": "g-1"}


def test_each_try_is_signed_anew_over_its_timestamp_key_and_body(monkeypatch):
    clock = iter([1_800_000_000.4, 1_800_000_042.9])
    monkeypatch.setattr(sms, "time", SimpleNamespace(time=lambda: next(clock)))
    with _Recorder() as gateway:
        client = _webhook(monkeypatch, gateway.url)
        send(client)
        send(client)
    for request, t in zip(gateway.requests, (1_800_000_000, 1_800_000_042), strict=True):
        mac = hmac.new(SECRET.encode(), f"v1:{t}:msg-1:".encode() + request.body, hashlib.sha256).hexdigest()
        assert request.headers["X-Signature"] == f"t={t},v1={mac}"
        assert request.headers["Idempotency-Key"] == "msg-1"


@pytest.mark.parametrize("failure", [500, 502, 504, "reset", "close", "timeout"])
@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "undeclared"])
def test_an_ambiguous_answer_is_retried_only_from_a_gateway_that_honours_the_key(monkeypatch, failure, idempotent):
    monkeypatch.setattr(sms, "TIMEOUT", (3.05, 0.3))
    with FakeSmsWebhook(SECRET) as fake:
        fake.stall = 1.0
        fake.script_failure(PHONE, failure, sends=True)
        client = _webhook(monkeypatch, fake.url, "true" if idempotent else "false")
        result = send(client)
        assert result.may_have_sent and result.outcome is (SmsOutcome.TRANSIENT if idempotent else SmsOutcome.UNKNOWN)
        again = send(client)  # what the sweep's retry meets: the first result, nothing more sent
        assert (again.outcome, again.provider_id, fake.count()) == (SmsOutcome.SENT, fake.sent[0]["provider_id"], 1)


def test_a_clear_answer_never_says_it_may_have_sent(monkeypatch):
    with FakeSmsWebhook(SECRET) as fake:
        fake.script([503, 400])
        client = _webhook(monkeypatch, fake.url, "true")
        assert not send(client).may_have_sent and not send(client).may_have_sent


@pytest.mark.parametrize(
    "url, secret, idempotent, reason",
    [
        ("http://sms.example.com/send", SECRET, "", "SMS_WEBHOOK_URL must be an https:// URL"),
        ("http://10.0.0.7/send", SECRET, "", "SMS_WEBHOOK_URL must be an https:// URL"),
        ("ftp://sms.example.com/send", SECRET, "", "SMS_WEBHOOK_URL must be an https:// URL"),
        ("", SECRET, "", "SMS_WEBHOOK_URL must be an https:// URL"),
        ("https://sms.example.com/send", "", "", "SMS_WEBHOOK_SECRET is empty"),
        ("https://sms.example.com/send", SECRET, "yes", "SMS_WEBHOOK_IDEMPOTENT must be true or false"),
    ],
)
def test_settings_a_signed_gateway_cannot_use_are_refused_at_construction(monkeypatch, url, secret, idempotent, reason):
    for name, value in {
        "SMS_WEBHOOK_URL": url,
        "SMS_WEBHOOK_SECRET": secret,
        "SMS_WEBHOOK_IDEMPOTENT": idempotent,
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(sms.Misconfigured, match=reason) as refused:
        sms.SignedWebhook()
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize(
    "url", ["https://sms.example.com/send", "http://127.0.0.1:8093/send", "http://localhost/send", "http://[::1]:80/"]
)
def test_https_and_loopback_http_gateways_are_accepted(monkeypatch, url):
    monkeypatch.setenv("SMS_WEBHOOK_URL", url)
    monkeypatch.setenv("SMS_WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("SMS_WEBHOOK_IDEMPOTENT", raising=False)
    assert sms.SignedWebhook().idempotent is False


def _readme_verify():
    """The `verify` of the README's verification example for gateways, as printed there."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    namespace: dict = {}
    exec(re.search(r"<!-- signed-gateway-verification -->\n```python\n(.*?)```", text, re.DOTALL)[1], namespace)
    return namespace["verify"]


def test_the_readme_example_verifies_what_the_client_sends(monkeypatch):
    verify = _readme_verify()
    with _Recorder() as gateway:
        send(_webhook(monkeypatch, gateway.url))
    [request] = gateway.requests
    headers = dict(request.headers.items())
    assert verify(SECRET.encode(), headers, request.body)
    assert not verify(b"another secret", headers, request.body)
    assert not verify(SECRET.encode(), headers | {"Idempotency-Key": "another key"}, request.body)
    assert not verify(SECRET.encode(), headers, request.body + b" ")
    monkeypatch.setattr("time.time", lambda: 2**40)  # long after: a replay
    assert not verify(SECRET.encode(), headers, request.body)
