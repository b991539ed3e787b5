"""track_delivery and record_inbound fed by an emulator push subscription, writing to the Firestore emulator."""

import json

import pytest

from functions import conversations, events, store
from functions.model import Fallback, Message, State
from local.processes import PROJECT, create_pull_subscription, pull_all
from tests.support import wait_for

PHONE, AGENT = "+447700900456", "agent@rbm.goog"


def receipt(event_type, event_id, message_id="m-1", minute=1, phone_field="senderPhoneNumber"):
    return {
        phone_field: PHONE,
        "eventType": event_type,
        "eventId": event_id,
        "messageId": message_id,
        "agentId": AGENT,
        "sendTime": f"2026-01-01T00:{minute:02d}:00Z",
    }


def push(send, payload):
    """Publish as the webhook does: the event bytes, attributes from the one parser."""
    return send(payload, **events.parse(payload).attributes())


def message(message_id="m-1"):
    return store.get_message(message_id)


def test_receipts_end_in_firestore_once_and_in_any_order(subscriber):
    send = subscriber("track_delivery")
    store.update_message("m-1", lambda _: Message("m-1", PHONE, AGENT, state=State.SENT, fallback=Fallback.WAITING))
    for payload in (receipt("READ", "e-read", minute=3), receipt("DELIVERED", "e-del", minute=2)) * 3:
        push(send, payload)
    done = wait_for(lambda: (m := message()) and len(m.applied) == 2 and m)
    assert (done.state, done.fallback) == (State.READ, Fallback.CANCELLED)
    assert done.delivered_at.minute == 2 and done.read_at.minute == 3
    assert sorted(done.applied) == ["e-del", "e-read"]


def test_the_same_event_pushed_three_times_changes_one_thing_once(subscriber):
    send = subscriber("track_delivery")
    for _ in range(3):
        push(send, receipt("DELIVERED", "e-1", message_id="m-3"))
    first = wait_for(lambda: message("m-3"))
    push(send, receipt("READ", "e-2", message_id="m-3"))  # a later event as a marker that the queue drained
    final = wait_for(lambda: (m := message("m-3")) and m.state is State.READ and m)
    assert final.applied == ["e-1", "e-2"]
    assert first.tracked is False  # a receipt for a message sent elsewhere gets a minimal record


def test_server_events_revoke_and_make_the_fallback_due(subscriber):
    send = subscriber("track_delivery")
    store.update_message("m-4", lambda _: Message("m-4", PHONE, AGENT, state=State.SENT, fallback=Fallback.WAITING))
    push(send, receipt("TTL_EXPIRATION_REVOKED", "s-1", message_id="m-4", phone_field="phoneNumber"))
    done = wait_for(lambda: (m := message("m-4")) and m.state is State.REVOKED and m)
    assert done.fallback is Fallback.DUE


def test_poison_lands_in_the_dead_letter_topic_with_its_reason(subscriber):
    send = subscriber("track_delivery")
    create_pull_subscription(PROJECT, send.dead_letter, f"{send.dead_letter}-pull")
    send(None, raw=b"\x00 not json", kind="user_event", event_type="DELIVERED")
    send(
        None,
        raw=b'{"senderPhoneNumber": "+1555", "eventType": "DELIVERED", "eventId": "x"}',
        kind="user_event",
        event_type="DELIVERED",
    )
    dead = pull_all(PROJECT, f"{send.dead_letter}-pull", wait_seconds=20, expect=2)
    reasons = sorted(attributes["dead_letter_reason"] for _, attributes in dead)
    assert reasons == ["DELIVERED without messageId, phone or eventId", "event data is not JSON"]
    assert all(a["dead_letter_subscriber"] == "track_delivery" for _, a in dead)
    assert "event_dead_lettered" in send.process.read_log()


def test_kinds_a_subscriber_does_not_handle_are_acknowledged_without_action(subscriber):
    send = subscriber("track_delivery")
    push(send, {"senderPhoneNumber": PHONE, "text": "hello", "messageId": "u-1", "agentId": AGENT})
    push(send, receipt("DELIVERED", "e-9", message_id="m-9"))
    wait_for(lambda: message("m-9"))
    assert message("u-1") is None


def conversation():
    return conversations.refs(AGENT, PHONE)[0]


def test_user_messages_typing_and_opt_out_are_recorded_once(subscriber):
    send = subscriber("record_inbound")
    texts = [
        {
            "senderPhoneNumber": PHONE,
            "agentId": AGENT,
            "messageId": "u-1",
            "sendTime": "2026-01-01T00:01:00Z",
            "text": "hi",
        },
        {
            "senderPhoneNumber": PHONE,
            "agentId": AGENT,
            "eventId": "u-2",
            "sendTime": "2026-01-01T00:02:00Z",
            "suggestionResponse": {"postbackData": "yes", "text": "Yes", "type": "REPLY"},
        },
        {
            "senderPhoneNumber": PHONE,
            "agentId": AGENT,
            "messageId": "u-3",
            "sendTime": "2026-01-01T00:03:00Z",
            "location": {"latitude": 1.5, "longitude": 2.5},
        },
    ]
    for payload in texts + texts:
        push(send, payload)
    push(
        send,
        {
            "senderPhoneNumber": PHONE,
            "agentId": AGENT,
            "eventType": "IS_TYPING",
            "eventId": "t-1",
            "sendTime": "2026-01-01T00:04:00Z",
        },
    )
    push(send, receipt("SUBSCRIBE", "s-1", minute=6) | {"messageId": None})
    push(send, receipt("UNSUBSCRIBE", "s-0", minute=5) | {"messageId": None})  # older: must not win
    push(send, receipt("UNSUBSCRIBE", "s-2", minute=7) | {"messageId": None})
    doc = wait_for(
        lambda: (
            (s := conversation().get()).exists
            and s.get("subscription_changed_at")
            and s.get("subscription_changed_at").minute == 7
            and s.get("last_typing_at")
            and s
        )
    )
    assert doc.get("opted_out") is True
    assert doc.get("last_activity_at").minute == 3
    stored = {s.id: s.to_dict() for s in conversation().collection("messages").stream()}
    assert sorted(stored) == ["u-1", "u-2", "u-3"]
    assert stored["u-2"]["suggestionResponse"]["postbackData"] == "yes"
    assert stored["u-1"]["content_type"] == "text" and "phone" not in stored["u-1"]
    assert conversations.opted_out(AGENT, PHONE)


def _nested(levels):
    value = "deep"
    for _ in range(levels):
        value = {"k": value}
    return value


LONE = json.loads('"\\ud83d"')  # half an emoji: json.loads accepts it, Firestore cannot store it


def user_text(message_id, text="hi", phone=PHONE, **fields):
    return {
        "senderPhoneNumber": phone,
        "agentId": AGENT,
        "messageId": message_id,
        "sendTime": "2026-01-01T00:09:00Z",
        "text": text,
        **fields,
    }


UNSTORABLE = {
    "track_delivery": [
        ("slash in messageId", receipt("DELIVERED", "d-1", message_id="m-ok/x"), "cannot be a Firestore document id"),
        ("dot-dot messageId", receipt("DELIVERED", "d-2", message_id=".."), "cannot be a Firestore document id"),
        ("reserved messageId", receipt("DELIVERED", "d-3", message_id="__m__"), "cannot be a Firestore document id"),
        ("long messageId", receipt("DELIVERED", "d-4", message_id="m" * 1501), "over 1500 bytes"),
        ("lone surrogate in messageId", receipt("DELIVERED", "d-5", message_id="m-ok" + LONE), "not valid Unicode"),
        (
            "lone surrogate in phone",
            receipt("DELIVERED", "d-6", message_id="m-new") | {"senderPhoneNumber": PHONE + LONE},
            "phone is not valid Unicode",
        ),
    ],
    "record_inbound": [
        ("slash in messageId", user_text("u-ok/x"), "cannot be a Firestore document id"),
        ("reserved messageId", user_text("__u__"), "cannot be a Firestore document id"),
        ("lone surrogate in phone", user_text("u-2", phone=PHONE + LONE), "phone is not valid Unicode"),
        (
            "too deep",
            {k: v for k, v in user_text("u-3").items() if k != "text"} | {"userFile": _nested(25)},
            "deeper than 20 levels",
        ),
        (
            "reserved field name",
            {k: v for k, v in user_text("u-4").items() if k != "text"} | {"userFile": {"__name__": "x"}},
            "reserves or refuses",
        ),
        ("over 1 MiB", user_text("u-5", text="x" * 1_100_000), "over Firestore's"),
        (
            "integer over 64 bits",
            {k: v for k, v in user_text("u-6").items() if k != "text"}
            | {"location": {"latitude": 2**64, "longitude": 1}},
            "outside 64 bits",
        ),
    ],
}


def _publish_as_the_webhook(send, payload):
    """The event bytes with the attributes the parser gives, less those Pub/Sub cannot carry."""
    attributes = {k: v for k, v in events.parse(payload).attributes().items() if LONE not in v}
    return send(payload, **attributes)


@pytest.mark.parametrize("target", sorted(UNSTORABLE))
def test_what_firestore_can_never_store_is_dead_lettered_on_the_first_delivery(subscriber, target):
    send = subscriber(target)
    create_pull_subscription(PROJECT, send.dead_letter, f"{send.dead_letter}-pull")
    store.update_message("m-ok", lambda _: Message("m-ok", PHONE, AGENT, state=State.SENT, fallback=Fallback.WAITING))
    push(send, receipt("READ", "r-0", message_id="m-ok") if target == "track_delivery" else user_text("u-ok"))
    before = wait_for(lambda: _stored(target))
    cases = UNSTORABLE[target]
    for _, payload, _ in cases:
        _publish_as_the_webhook(send, payload)
    dead = pull_all(PROJECT, f"{send.dead_letter}-pull", wait_seconds=40, expect=len(cases))
    reasons = {data: attributes.get("dead_letter_reason", "") for data, attributes in dead}
    for name, payload, reason in cases:
        assert reason in reasons.get(json.dumps(payload).encode(), "(not dead-lettered)"), name
    assert all(a["dead_letter_subscriber"] == target for _, a in dead)  # ours, not Pub/Sub's after 5 attempts
    log = send.process.read_log()
    assert log.count('"event_dead_lettered"') == len(cases) and "Traceback" not in log
    assert _stored(target) == before  # nothing already stored was damaged


def _stored(target):
    """What the test stored first: the message, or the conversation with its one message."""
    if target == "track_delivery":
        m = message("m-ok")
        return m.state is State.READ and m.to_doc()
    snapshot = conversation().get()
    messages = {s.id: s.to_dict() for s in conversation().collection("messages").stream()}
    return snapshot.exists and list(messages) == ["u-ok"] and (snapshot.to_dict(), messages)


def test_text_that_is_not_valid_unicode_is_stored_with_the_bad_part_replaced(subscriber):
    send = subscriber("record_inbound")
    push(send, user_text("u-half", text="see you " + LONE))
    push(
        send,
        {
            "senderPhoneNumber": PHONE,
            "agentId": AGENT,
            "eventId": "u-chip",
            "sendTime": "2026-01-01T00:10:00Z",
            "suggestionResponse": {"postbackData": "pick" + LONE, "text": LONE + "Yes", "type": "REPLY"},
        },
    )
    stored = wait_for(
        lambda: len(docs := {s.id: s.to_dict() for s in conversation().collection("messages").stream()}) == 2 and docs
    )
    assert stored["u-half"]["text"] == "see you \ufffd"
    assert stored["u-chip"]["suggestionResponse"] == {
        "postbackData": "pick\ufffd",
        "text": "\ufffdYes",
        "type": "REPLY",
    }
    log = send.process.read_log()
    assert log.count('"user_message_repaired"') == 2 and "event_dead_lettered" not in log and "Traceback" not in log
