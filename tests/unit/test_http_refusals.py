"""The HTTP entry points' refusals that come before anything is read from Firestore or
stored (send_batch's, and send_message's and receive_sms_status's first ones): each a 4xx
with a JSON reason (never a 5xx for input that can never succeed, never HTML)."""

import flask
import pytest

from functions import batch_request, receive_sms_status, send_batch, send_message

APP = flask.Flask(__name__)
JSON = {"Content-Type": "application/json"}


def answer(
    method: str = "POST", data: bytes = b"", headers: dict[str, str] | None = None, length: int | None = None
) -> flask.Response:
    declared = {} if length is None else {"CONTENT_LENGTH": str(length)}
    with APP.test_request_context("/", method=method, data=data, headers=headers or JSON, environ_overrides=declared):
        return APP.make_response(send_batch.handle(flask.request))


@pytest.mark.parametrize(
    ("data", "headers", "status", "says"),
    [
        (b'{"messages": [', JSON, 400, "JSON object"),  # not JSON
        (b'{"messages": [{"phone": "+14155550123"}]}', {"Content-Type": "text/plain"}, 400, "JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, JSON, 400, "too deep"),
    ],
)
def test_a_body_that_is_not_a_batch_is_refused_with_its_reason(data, headers, status, says):
    response = answer(data=data, headers=headers)
    assert response.status_code == status and says in response.json["error"], response.get_data(as_text=True)


def test_a_declared_length_over_the_limit_is_refused_unread():
    response = answer(data=b"{}", length=batch_request.MAX_BODY_BYTES + 1)
    assert response.status_code == 413 and "body over" in response.json["error"]


def test_only_post_is_taken():
    response = answer(method="GET")
    assert response.status_code == 405 and response.json["error"] == "method not allowed"


def test_send_message_takes_only_post():
    with APP.test_request_context("/", method="GET"):
        response = APP.make_response(send_message.handle(flask.request))
    assert response.status_code == 405 and response.json["error"] == "method not allowed"


def test_a_status_callback_over_its_limit_or_signed_by_twilio_without_its_url_is_refused(monkeypatch):
    with APP.test_request_context("/", method="POST", data=b"x" * (receive_sms_status.MAX_BODY + 1)):
        too_large = APP.make_response(receive_sms_status.handle(flask.request))
    assert too_large.status_code == 413 and too_large.json["error"] == "body too large"
    monkeypatch.delenv("SMS_STATUS_CALLBACK_URL", raising=False)
    signed = {"X-Twilio-Signature": "c2lnbmVk", "Content-Type": "application/x-www-form-urlencoded"}
    with APP.test_request_context("/", method="POST", data=b"MessageStatus=sent", headers=signed):
        unchecked = APP.make_response(receive_sms_status.handle(flask.request))
    assert unchecked.status_code == 401 and "SMS_STATUS_CALLBACK_URL" in unchecked.json["error"]
