"""The SMS providers' clients against the fake providers on loopback: what
each answer and each failure of the exchange means (README, "SMS providers'
answers"), and that an error never carries the reply's text."""

import socket

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


def _webhook(monkeypatch, url):
    monkeypatch.setenv("SMS_WEBHOOK_URL", url + "/send")
    monkeypatch.setenv("SMS_WEBHOOK_SECRET", SECRET)
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
