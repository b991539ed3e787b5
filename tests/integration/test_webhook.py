"""receive_webhook as a real functions-framework process publishing to the Pub/Sub emulator."""

import base64
import hashlib
import hmac
import json

import pytest
import requests

from local.processes import PROJECT, free_port, pull_all

TOKEN, OLD_TOKEN = "integration-token", "previous-token"
PHONE = "+447700900123"


def signed(event: dict, token: str = TOKEN) -> tuple[bytes, dict]:
    data = json.dumps(event).encode()
    signature = base64.b64encode(hmac.new(token.encode(), data, hashlib.sha512).digest()).decode()
    body = {
        "message": {"data": base64.b64encode(data).decode(), "messageId": "1", "publishTime": "2026-01-01T00:00:00Z"},
        "subscription": "projects/rbm/subscriptions/partner",
    }
    return json.dumps(body).encode(), {"X-Goog-Signature": signature, "Content-Type": "application/json"}


def receipt(event_id="e1") -> dict:
    return {
        "senderPhoneNumber": PHONE,
        "eventType": "DELIVERED",
        "eventId": event_id,
        "messageId": "m1",
        "sendTime": "2026-01-01T00:00:01Z",
        "agentId": "agent@rbm.goog",
    }


@pytest.fixture
def webhook(functions, topic):
    events = topic("events")
    process = functions(
        "receive_webhook", env={"RBM_CLIENT_TOKEN": f"{OLD_TOKEN},{TOKEN}", "RBM_EVENTS_TOPIC": events.topic}
    )
    return process, events


def test_signed_event_arrives_once_verbatim_with_its_attributes(webhook):
    process, events = webhook
    body, headers = signed(receipt())
    response = requests.post(process.url, data=body, headers=headers, timeout=10)
    assert response.status_code == 200
    [(data, attributes)] = pull_all(PROJECT, events.subscription, wait_seconds=3)
    assert data == json.dumps(receipt()).encode()
    assert attributes == {
        "kind": "user_event",
        "event_type": "DELIVERED",
        "event_id": "e1",
        "message_id": "m1",
        "agent_id": "agent@rbm.goog",
    }


def test_rejected_requests_publish_nothing(webhook):
    process, events = webhook
    body, headers = signed(receipt())
    tampered = json.loads(body)
    tampered["message"]["data"] = base64.b64encode(json.dumps(receipt() | {"eventType": "READ"}).encode()).decode()
    cases = [
        (body, {"X-Goog-Signature": signed(receipt(), "wrong-token")[1]["X-Goog-Signature"]}, 401),
        (body, {}, 401),
        (json.dumps(tampered).encode(), headers, 401),
        (b"{not json", headers, 400),
        (b'{"message": {"data": 42}}', headers, 400),
        (b"x" * (2 << 20), headers, 413),
    ]
    for data, request_headers, status in cases:
        response = requests.post(process.url, data=data, headers=request_headers, timeout=10)
        assert response.status_code == status, (status, response.text)
        assert response.json()["error"]
    assert requests.get(process.url, timeout=10).status_code == 405
    # A valid event last: once it is in, anything published before it would be too.
    sentinel, sentinel_headers = signed(receipt("sentinel"), OLD_TOKEN)
    assert requests.post(process.url, data=sentinel, headers=sentinel_headers, timeout=10).status_code == 200
    received = pull_all(PROJECT, events.subscription, wait_seconds=3)
    assert [json.loads(data)["eventId"] for data, _ in received] == ["sentinel"]


def test_handshake_echoes_the_secret_for_a_known_token(webhook):
    process, _ = webhook
    response = requests.post(process.url, json={"clientToken": OLD_TOKEN, "secret": "abc123"}, timeout=10)
    assert (response.status_code, response.text, response.headers["Content-Type"].split(";")[0]) == (
        200,
        "abc123",
        "text/plain",
    )
    assert requests.post(process.url, json={"clientToken": "stranger", "secret": "x"}, timeout=10).status_code == 403


def test_missing_topic_answers_503(functions, pubsub_emulator):
    process = functions("receive_webhook", env={"RBM_CLIENT_TOKEN": TOKEN, "RBM_EVENTS_TOPIC": "no-such-topic"})
    assert (
        requests.post(process.url, data=signed(receipt())[0], headers=signed(receipt())[1], timeout=10).status_code
        == 503
    )


def test_unreachable_pubsub_answers_503_within_the_bound(functions):
    process = functions(
        "receive_webhook",
        env={
            "RBM_CLIENT_TOKEN": TOKEN,
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{free_port()}",
            "PUBLISH_TIMEOUT_SECONDS": "1",
        },
    )
    response = requests.post(process.url, data=signed(receipt())[0], headers=signed(receipt())[1], timeout=15)
    assert response.status_code == 503
    assert response.elapsed.total_seconds() < 5


def test_logs_hold_no_phone_number_and_no_token(webhook):
    process, events = webhook
    for event in (receipt(), {"senderPhoneNumber": PHONE, "text": "hi", "messageId": "u1", "agentId": "a"}):
        requests.post(process.url, data=signed(event)[0], headers=signed(event)[1], timeout=10)
    requests.post(process.url, data=signed(receipt(), "bad")[0], headers=signed(receipt(), "bad")[1], timeout=10)
    requests.post(process.url, json={"clientToken": TOKEN, "secret": "topsecret"}, timeout=10)
    pull_all(PROJECT, events.subscription, wait_seconds=3, expect=2)
    log = process.read_log()
    assert "event published" in log and "signature" in log
    for secret in (PHONE, PHONE[1:], TOKEN, OLD_TOKEN, "topsecret"):
        assert secret not in log
    for line in log.splitlines():
        if line.startswith("{"):
            assert {"severity", "message"} <= json.loads(line).keys()


def test_an_event_whose_ids_cannot_be_attributes_is_still_queued_and_answered_200(webhook):
    process, events = webhook
    event = receipt() | {"eventId": "half \ud83d", "messageId": "m" * 2000}
    body, headers = signed(event)
    response = requests.post(process.url, data=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    [(data, attributes)] = pull_all(PROJECT, events.subscription, wait_seconds=3)
    assert data == json.dumps(event).encode()
    assert "event_id" not in attributes and "message_id" not in attributes and attributes["kind"] == "user_event"


def test_a_handshake_that_cannot_be_echoed_gets_a_json_400(webhook):
    process, _ = webhook
    body = json.dumps({"clientToken": TOKEN, "secret": "half \ud83d"}).encode()
    response = requests.post(process.url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400 and response.headers["Content-Type"] == "application/json"
