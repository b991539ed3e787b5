"""send_message as a real process, against the fake RBM platform and the Firestore emulator."""

import json
import uuid

import pytest
import requests

from functions import conversations, store
from functions.model import Conversation, Message, State

PHONE, AGENT = "+447700900789", "agent@rbm.goog"
CONTENT = {"text": "Your code is 123456"}


@pytest.fixture
def send(functions, firestore, rbm):
    process = functions(
        "send_message", env={"RBM_API_ENDPOINT": rbm.url, "RBM_AGENT_ID": AGENT, "RBM_RETRY_SECONDS": "1"}
    )

    def call(**body):
        body = {"phone": PHONE, "content": CONTENT, "message_id": str(uuid.uuid4()), **body}
        return requests.post(process.url, json=body, timeout=30)

    call.url = process.url
    return call


def test_accepted_message_is_recorded_then_sent_with_its_id(send, rbm):
    response = send(
        revoke_after_seconds=600,
        fallback={"text": "code 123456", "time_sensitive": True},
        traffic_type="AUTHENTICATION",
    )
    assert response.status_code == 200
    answer = response.json()
    assert (answer["state"], answer["fallback"]) == ("SENT", "WAITING")
    [call] = [r for r in rbm.requests if r["kind"] == "create"]
    assert (call["phone"], call["message_id"], call["agent_id"]) == (
        PHONE,
        answer["message_id"],
        "agent",
    )  # the part before @rbm.goog
    assert call["body"] == {"contentMessage": CONTENT, "messageTrafficType": "AUTHENTICATION"}
    stored = store.get_message(answer["message_id"])
    assert stored.revoke_at is not None and stored.next_action_at == stored.revoke_at and stored.time_sensitive


def test_same_message_id_twice_never_sends_twice(send, rbm):
    message_id = str(uuid.uuid4())
    first, second = send(message_id=message_id), send(message_id=message_id)
    assert first.json() == second.json() and second.status_code == 200
    assert rbm.count("create") == 1
    assert send(message_id=message_id, phone="+447700900000").status_code == 409


def test_not_rcs_is_unreachable_with_the_fallback_due_at_once(send, rbm):
    rbm.set_phone(PHONE, "not_rcs")
    answer = send(revoke_after_seconds=60, fallback={"text": "hello by SMS"}).json()
    assert (answer["state"], answer["fallback"]) == ("UNREACHABLE", "DUE")


@pytest.mark.parametrize("status", [400, 403])
def test_permanent_refusals_fail_with_the_reason(send, rbm, status):
    rbm.script("create", PHONE, [status])
    response = send()
    assert (response.status_code, response.json()["state"]) == (422, "FAILED")
    assert f"RBM {status}" in store.get_message(response.json()["message_id"]).last_error


def test_transient_failure_answers_503_and_stays_pending(send, rbm):
    rbm.set_phone(PHONE, "error")
    response = send()
    assert response.status_code == 503
    assert store.get_message(response.json()["message_id"]).state is State.PENDING
    assert rbm.count("create") >= 2  # retried with backoff inside its bound
    rbm.set_phone(PHONE, "accept")
    assert send(message_id=response.json()["message_id"]).json()["state"] == "SENT"  # same id, sent once


def test_opted_out_user_is_refused_and_nothing_is_sent(send, rbm):
    store.update(
        conversations.refs(AGENT, PHONE)[0], Conversation, lambda _: Conversation(AGENT, PHONE, opted_out=True)
    )
    response = send()
    assert response.status_code == 409 and "unsubscribed" in response.json()["error"]
    assert rbm.count("create") == 0


@pytest.mark.parametrize(
    "body",
    [
        {"phone": "07700900789"},
        {"content": {}},
        {"message_id": "not-a-uuid"},
        {"revoke_after_seconds": 5},
        {"revoke_after_seconds": "60"},
        {"traffic_type": "SPAM"},
        {"fallback": {"text": "   "}},
        {"fallback": {"text": "x" * 1601}},
        {"fallback": {"text": "😀" * 801}},  # 801 characters, 1,602 UTF-16 units: Twilio would refuse it (21617)
        {"fallback": {"text": "ok", "time_sensitive": "yes"}},
        {"agent_id": 7},
    ],
)
def test_invalid_requests_get_400_with_a_reason(send, rbm, body):
    response = send(**body)
    assert response.status_code == 400 and response.json()["error"]
    assert rbm.count("create") == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"fallback": {"text": "see you \ud83d"}}, "fallback.text"),  # half an emoji: no Firestore write could store it
        ({"content": {"text": "see you \ud83d"}}, "content.text"),
        ({"content": {"text": "x" * 3073}}, "content.text"),
        (
            {"content": {"text": "x", "suggestions": [{"reply": {"text": "x" * 26, "postbackData": "p"}}]}},
            "content.suggestions[0].reply.text",
        ),
        ({"content": {"text": "x", "contentInfo": {"fileUrl": "https://example.com/a.png"}}}, "exactly one of"),
        ({"content": {"text": "x", "extra": {"__name__": 1}}}, "content.extra"),
        ({"content": {"text": "x", "extra": 2**64}}, "content.extra"),  # Firestore integers are 64-bit
        ({"agent_id": "a" * 1_100_000}, "agent_id"),  # over Firestore's value limit
        ({"agent_id": "a" * 1100}, "agent_id"),  # over Pub/Sub's 1,024 bytes: outcome events carry it as an attribute
        ({"traffic_type": ["AUTHENTICATION"]}, "traffic_type"),
    ],
)
def test_what_cannot_be_stored_or_sent_is_400_naming_the_field_and_nothing_is_stored(send, rbm, body, field):
    message_id = str(uuid.uuid4())
    response = send(message_id=message_id, **body)
    assert response.status_code == 400 and field in response.json()["error"]
    assert store.get_message(message_id) is None
    assert rbm.count("create") == 0


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_number_json_does_not_have_is_400_and_nothing_is_stored(send, rbm, literal):
    # Python's parser takes these; no JSON encoder sends them on to RBM, so the create could never be made.
    message_id = str(uuid.uuid4())
    body = json.dumps({"phone": PHONE, "content": {"text": "x", "n": 0}, "message_id": message_id})
    data = body.replace('"n": 0', f'"n": {literal}').encode()
    response = requests.post(send.url, data=data, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400 and "content.n" in response.json()["error"]
    assert store.get_message(message_id) is None
    assert rbm.count("create") == 0


def test_json_nested_deeper_than_the_parser_goes_is_400(send, rbm):
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    response = requests.post(send.url, data=deep, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]
    assert rbm.count("create") == 0


@pytest.mark.parametrize(
    "change",
    [
        {"content": {"text": "Your code is 654321"}},
        {"revoke_after_seconds": 900},
        {"traffic_type": "TRANSACTION"},
        {"fallback": {"text": "another SMS", "time_sensitive": True}},
        {"fallback": {"text": "code 123456", "time_sensitive": False}},
    ],
)
def test_a_reused_message_id_with_a_different_request_is_409_and_nothing_is_sent(send, rbm, change):
    first = {
        "message_id": str(uuid.uuid4()),
        "revoke_after_seconds": 600,
        "traffic_type": "AUTHENTICATION",
        "fallback": {"text": "code 123456", "time_sensitive": True},
    }
    assert send(**first).status_code == 200
    stored = store.get_message(first["message_id"])
    response = send(**first | change)
    assert response.status_code == 409 and "different request" in response.json()["error"]
    assert rbm.count("create") == 1
    assert store.get_message(first["message_id"]) == stored
    assert send(**first).json() == {"message_id": first["message_id"], "state": "SENT", "fallback": "WAITING"}


def test_a_message_id_another_sender_used_is_409_and_nothing_is_sent(send, rbm):
    message_id = str(uuid.uuid4())  # track_delivery recorded a receipt for it: another system sent it
    store.update_message(message_id, lambda _: Message(message_id, PHONE, AGENT, state=State.DELIVERED, tracked=False))
    response = send(message_id=message_id)
    assert response.status_code == 409 and "another sender" in response.json()["error"]
    assert rbm.count("create") == 0
    assert store.get_message(message_id).tracked is False


def test_a_fallback_text_the_sms_provider_would_refuse_is_400_with_its_count_and_its_cost_is_stored(
    functions, firestore, rbm
):
    process = functions(
        "send_message", env={"RBM_API_ENDPOINT": rbm.url, "RBM_AGENT_ID": AGENT, "SMS_MAX_SEGMENTS": "2"}
    )

    def send(text):
        body = {"phone": PHONE, "content": CONTENT, "message_id": str(uuid.uuid4()), "fallback": {"text": text}}
        return body["message_id"], requests.post(process.url, json=body, timeout=30)

    message_id, refused = send("Votre code: 1234 ✅ " * 4)  # 76 UCS-2 units: 2 segments
    assert refused.status_code == 200 and store.get_message(message_id).fallback_segments == 2
    message_id, refused = send("Votre code: 1234 ✅ " * 8)
    assert (refused.status_code, refused.json()["error"]) == (
        400,
        "fallback.text is 152 UCS-2 units in 3 segments; the SMS provider takes at most 1,600 units in 2 segments",
    )
    assert store.get_message(message_id) is None and rbm.count("create") == 1
