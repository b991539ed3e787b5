"""receive_webhook's answers, on the handler itself with Pub/Sub replaced by a recorder.

The end-to-end version against a real functions-framework process and the
Pub/Sub emulator lives in tests/integration/test_webhook.py.
"""

import base64
import hashlib
import hmac
import json
from types import SimpleNamespace

import flask
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions import pubsub, receive_webhook

TOKEN = "unit-token"
app = flask.Flask(__name__)


def sign(data: bytes, token: str = TOKEN) -> str:
    return base64.b64encode(hmac.new(token.encode(), data, hashlib.sha512).digest()).decode()


def envelope(event: dict) -> tuple[bytes, dict]:
    data = json.dumps(event).encode()
    body = {
        "message": {"data": base64.b64encode(data).decode(), "messageId": "1", "publishTime": "2026-01-01T00:00:00Z"},
        "subscription": "s",
    }
    return json.dumps(body).encode(), {"X-Goog-Signature": sign(data)}


@pytest.fixture
def published(monkeypatch):
    sent = []
    monkeypatch.setenv("RBM_CLIENT_TOKEN", f"old-token,{TOKEN}")

    def record(topic, data, attributes):
        sent.append((topic, data, attributes))
        return str(len(sent))

    monkeypatch.setattr(pubsub, "publish", record)
    return sent


def call(body: bytes, headers=None, method="POST"):
    with app.test_request_context("/", method=method, data=body, headers=headers or {}):
        result = receive_webhook.handle(flask.request)
    return app.make_response(result)


def test_signed_event_is_published_verbatim_with_attributes(published):
    event = {
        "senderPhoneNumber": "+15550001111",
        "eventType": "READ",
        "eventId": "e1",
        "messageId": "m1",
        "agentId": "a",
    }
    body, headers = envelope(event)
    response = call(body, headers)
    assert response.status_code == 200
    [(topic, data, attributes)] = published
    assert topic == "rbm-events" and json.loads(data) == event
    assert attributes == {
        "kind": "user_event",
        "event_type": "READ",
        "event_id": "e1",
        "message_id": "m1",
        "agent_id": "a@rbm.goog",  # canonical: the event said "a"
    }


def test_handshake_answers_the_secret_as_plain_text(published):
    response = call(json.dumps({"clientToken": TOKEN, "secret": "s3cr3t"}).encode())
    assert (response.status_code, response.get_data(as_text=True), response.mimetype) == (200, "s3cr3t", "text/plain")
    assert call(json.dumps({"clientToken": "nope", "secret": "s"}).encode()).status_code == 403
    assert not published


@pytest.mark.parametrize(
    "body, headers, status",
    [
        (b"not json", {}, 400),
        (b"[]", {}, 400),
        (b'{"message": {}}', {}, 400),
        (b'{"message": {"data": "***"}}', {}, 400),
        (
            json.dumps({"message": {"data": base64.b64encode(b"[1]").decode()}}).encode(),
            {"X-Goog-Signature": sign(b"[1]")},
            400,
        ),
        (envelope({"text": "x"})[0], {}, 401),
        (envelope({"text": "x"})[0], {"X-Goog-Signature": sign(b"other")}, 401),
        (envelope({"text": "x"})[0], {"X-Goog-Signature": sign(json.dumps({"text": "x"}).encode(), "wrong")}, 401),
        (b"x" * (receive_webhook.MAX_BODY + 1), {"X-Goog-Signature": sign(b"x")}, 413),
        (b"[" * 2000 + b"]" * 2000, {}, 400),  # deeper than the JSON parser goes
        (
            json.dumps({"message": {"data": base64.b64encode(b"[" * 5000 + b"]" * 5000).decode()}}).encode(),
            {"X-Goog-Signature": sign(b"[" * 5000 + b"]" * 5000)},
            400,
        ),
    ],
)
def test_bad_requests_get_a_json_reason_and_publish_nothing(published, body, headers, status):
    response = call(body, headers)
    assert response.status_code == status
    assert response.get_json()["error"]
    assert not published


def test_other_methods_are_405(published):
    assert call(b"", method="GET").status_code == 405


def test_publish_failure_is_503(published, monkeypatch):
    def fail(*_):
        raise pubsub.PublishError("down")

    monkeypatch.setattr(pubsub, "publish", fail)
    assert call(*envelope({"text": "x", "senderPhoneNumber": "+1"})).status_code == 503


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def requests(draw):
    """Arbitrary bodies, from raw bytes to near-valid envelopes, with arbitrary headers."""
    data = draw(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
    message = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "data": st.just(base64.b64encode(data).decode()) | st.text(max_size=30) | json_values,
                "attributes": json_values,
            },
        )
    )
    body = draw(
        st.binary(max_size=300)
        | st.just(json.dumps({"message": message}).encode())
        | json_values.map(lambda v: json.dumps(v).encode())
    )
    header_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=100)  # what HTTP can carry
    signature = draw(st.none() | header_text | st.just(sign(data, "attacker")))
    headers = {"X-Goog-Signature": signature} if signature is not None else {}
    return body, headers


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_arbitrary_unsigned_requests_never_publish_and_never_5xx(published, request):
    response = call(*request)
    assert 400 <= response.status_code < 500 or response.status_code == 200
    assert not published


@pytest.mark.parametrize("bad_id", ["see you \ud83d", "x" * 1025, "é" * 513])
def test_ids_that_cannot_be_attributes_are_left_out_and_the_event_still_published(published, bad_id):
    event = {
        "senderPhoneNumber": "+15550001111",
        "eventType": "READ",
        "eventId": bad_id,
        "messageId": "m1",
        "agentId": "a",
    }
    data = json.dumps(event).encode()
    body = {"message": {"data": base64.b64encode(data).decode(), "messageId": "1"}, "subscription": "s"}
    response = call(json.dumps(body).encode(), {"X-Goog-Signature": sign(data)})
    assert response.status_code == 200
    [(_, sent, attributes)] = published
    assert sent == data and "event_id" not in attributes and attributes["message_id"] == "m1"


def test_an_id_of_exactly_1024_bytes_stays_an_attribute(published):
    event = {"senderPhoneNumber": "+15550001111", "eventType": "READ", "eventId": "é" * 512, "agentId": "a"}
    body, headers = envelope(event)
    assert call(body, headers).status_code == 200
    assert published[0][2]["event_id"] == "é" * 512


@pytest.mark.parametrize("field", ["secret", "clientToken"])
def test_a_handshake_that_is_not_valid_unicode_is_a_400(published, field):
    handshake = {"clientToken": TOKEN, "secret": "s3cret"} | {field: "half \ud83d"}
    response = call(json.dumps(handshake).encode())
    assert response.status_code == 400 and response.is_json and "Unicode" in response.get_json()["error"]


def test_an_unexpected_error_answers_json_500_and_logs_the_traceback(published, monkeypatch, capsys):
    import main
    from functions import events

    def explode(data, envelope_type=None):
        raise RuntimeError("boom for +15550001111")

    monkeypatch.setattr(events, "decode", explode)
    body, headers = envelope({"senderPhoneNumber": "+15550001111", "text": "hi", "messageId": "m"})
    with app.test_request_context("/", method="POST", data=body, headers=headers):
        response = app.make_response(main.receive_webhook(flask.request))
    assert response.status_code == 500 and response.get_json() == {"error": "internal error"}
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "unhandled_error" in line]
    assert line["severity"] == "ERROR" and "RuntimeError" in line["traceback"]
    assert "5550001111" not in json.dumps(line)
    assert published == []


def envelope_with(event: dict, attributes: dict) -> tuple[bytes, dict]:
    """`event` signed, in an envelope whose (unsigned) attributes anyone may set."""
    body, headers = envelope(event)
    wrapped = json.loads(body)
    wrapped["message"]["attributes"] = attributes
    return json.dumps(wrapped).encode(), headers


def test_the_unsigned_envelope_type_cannot_reclassify_a_signed_event(published):
    event = {"senderPhoneNumber": "+15550001111", "eventType": "READ", "eventId": "e1", "messageId": "m1"}
    response = call(*envelope_with(event, {"type": "agent_launch_event"}))
    assert response.status_code == 200
    assert published[0][2]["kind"] == "user_event"


@pytest.mark.parametrize(
    "header",
    [None, "", "not base64!", base64.b64encode(b"x" * 32).decode(), base64.b64encode(b"x" * 65).decode()],
)
def test_an_unsigned_body_larger_than_a_handshake_is_refused_unread(published, monkeypatch, capsys, header):
    def no_parsing(*_):
        raise AssertionError("a stranger's body was parsed")

    monkeypatch.setattr(receive_webhook, "json", SimpleNamespace(loads=no_parsing))
    body = b"[" + b"{}," * (receive_webhook.MAX_HANDSHAKE // 3) + b"{}]"
    response = call(body, {"X-Goog-Signature": header} if header is not None else {})
    assert response.status_code == 401 and response.get_json()["error"]
    assert '"event": "signature_rejected"' in capsys.readouterr().out
    assert not published


def test_a_handshake_as_large_as_allowed_is_still_answered(published):
    handshake = {"clientToken": TOKEN, "secret": ""}
    handshake["secret"] = "s" * (receive_webhook.MAX_HANDSHAKE - len(json.dumps(handshake)))
    assert len(json.dumps(handshake)) == receive_webhook.MAX_HANDSHAKE
    response = call(json.dumps(handshake).encode())
    assert response.status_code == 200 and response.get_data(as_text=True) == handshake["secret"]


def test_a_signed_body_over_the_limit_is_413_and_the_largest_real_event_fits(published):
    text = "\U0001f600" * 8000  # json.dumps escapes each as 12 bytes
    body, headers = envelope({"senderPhoneNumber": "+15550001111", "text": text, "messageId": "m1"})
    assert len(body) <= receive_webhook.MAX_BODY and call(body, headers).status_code == 200
    assert call(b" " * (receive_webhook.MAX_BODY + 1), headers).status_code == 413
