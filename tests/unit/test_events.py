"""Every documented RBM payload shape, the doc quirks, and unknown types."""

import json

import pytest

from functions.events import EventError, Kind, decode, parse

PHONE = "+15550001111"


@pytest.mark.parametrize(
    "content",
    [
        {"text": "hello"},
        {
            "userFile": {
                "payload": {
                    "mimeType": "image/png",
                    "fileSizeBytes": 10,
                    "fileUri": "https://x/y",
                    "fileName": "y.png",
                },
                "thumbnail": {
                    "mimeType": "image/png",
                    "fileSizeBytes": 1,
                    "fileUri": "https://x/t",
                    "fileName": "t.png",
                },
            }
        },
        {"location": {"latitude": 51.5, "longitude": -0.1}},
        {"suggestionResponse": {"postbackData": "yes", "text": "Yes", "type": "REPLY"}},
    ],
)
def test_user_messages(content):
    event = parse(
        {
            "senderPhoneNumber": PHONE,
            "agentId": "a@rbm.goog",
            "messageId": "m1",
            "sendTime": "2026-01-01T00:00:00Z",
            **content,
        }
    )
    assert event.kind is Kind.USER_MESSAGE
    assert (event.phone, event.agent_id, event.message_id, event.dedupe_id) == (PHONE, "a@rbm.goog", "m1", "m1")
    assert event.content_type == next(iter(content))


def test_user_message_with_event_id_instead_of_message_id():
    event = parse({"senderPhoneNumber": PHONE, "eventId": "e1", "text": "hi"})
    assert event.kind is Kind.USER_MESSAGE and event.dedupe_id == "e1" and event.message_id is None


@pytest.mark.parametrize("event_type", ["DELIVERED", "READ", "IS_TYPING", "SUBSCRIBE", "UNSUBSCRIBE", "SOMETHING_NEW"])
def test_user_events(event_type):
    event = parse(
        {"senderPhoneNumber": PHONE, "eventType": event_type, "eventId": "e1", "messageId": "m1", "agentId": "a"}
    )
    assert event.kind is Kind.USER_EVENT
    assert (event.event_type, event.event_id, event.message_id, event.phone) == (event_type, "e1", "m1", PHONE)


@pytest.mark.parametrize("event_type", ["TTL_EXPIRATION_REVOKED", "TTL_EXPIRATION_REVOKE_FAILED"])
def test_server_events_use_phone_number(event_type):
    event = parse({"phoneNumber": PHONE, "messageId": "m1", "agentId": "a", "eventType": event_type, "eventId": "e9"})
    assert event.kind is Kind.SERVER_EVENT
    assert (event.phone, event.event_type, event.message_id) == (PHONE, event_type, "m1")


def test_agent_launch_event_by_its_own_fields_only():
    payload = {
        "eventId": "e",
        "agentId": "a",
        "brandId": "b",
        "regionId": "r",
        "oldLaunchState": "PENDING",
        "newLaunchState": "LAUNCHED",
    }
    assert parse(payload).kind is Kind.AGENT_LAUNCH_EVENT
    assert parse({k: v for k, v in payload.items() if k != "oldLaunchState"}).kind is Kind.AGENT_LAUNCH_EVENT


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"foo": 1},
        {"senderPhoneNumber": PHONE},
        {"senderPhoneNumber": 15550001111, "text": "x"},
        {"phoneNumber": PHONE},
    ],
)
def test_unknown_shapes_are_kept_not_rejected(payload):
    event = parse(payload)
    assert event.kind is Kind.UNKNOWN and event.raw == payload
    assert event.attributes() == {"kind": "unknown"}


def test_unknown_fields_are_kept():
    payload = {"senderPhoneNumber": PHONE, "text": "x", "newField": {"a": 1}}
    assert parse(payload).raw["newField"] == {"a": 1}


def test_attributes_never_carry_the_phone_and_skip_absent_or_oversized_values():
    event = parse(
        {"senderPhoneNumber": PHONE, "eventType": "DELIVERED", "eventId": "e" * 1025, "messageId": "m1", "agentId": "a"}
    )
    attributes = event.attributes()
    assert attributes == {"kind": "user_event", "event_type": "DELIVERED", "message_id": "m1", "agent_id": "a@rbm.goog"}
    assert PHONE not in json.dumps(attributes)


@pytest.mark.parametrize("data", [b"not json", b"[1,2]", b'"text"', b"\xff\xfe", b"null"])
def test_decode_refuses_what_is_not_a_json_object(data):
    with pytest.raises(EventError):
        decode(data)


def test_decode_reads_an_event_and_leaves_an_id_that_is_not_unicode_out_of_the_attributes():
    # JSON's escape of a lone surrogate is valid JSON, but no UTF-8 encoder takes the string.
    event = decode(
        b'{"senderPhoneNumber": "+15550001111", "eventType": "DELIVERED", "eventId": "e\\ud83d", "messageId": "m1"}'
    )
    assert event.kind is Kind.USER_EVENT and event.event_id == "e\ud83d"
    assert event.attributes() == {"kind": "user_event", "event_type": "DELIVERED", "message_id": "m1"}


def test_json_nested_deeper_than_the_parser_goes_is_not_an_event():
    with pytest.raises(EventError, match="too deep"):
        decode(b"[" * 5000 + b"]" * 5000)


@pytest.mark.parametrize(
    ("send_time", "expected"),
    [
        ("2026-01-01T00:09:00Z", "2026-01-01T00:09:00+00:00"),
        ("2026-01-01T00:09:00.123456789Z", "2026-01-01T00:09:00.123456+00:00"),  # RBM's nanoseconds, cut to micro
        ("2026-01-01T02:09:00.5+02:00", "2026-01-01T02:09:00.500000+02:00"),
        ("2026-01-01 00:09:00Z", None),  # not RFC 3339
        ("2026-01-01T00:09:00", None),  # no zone: ambiguous
        ("yesterday", None),
        (None, None),
    ],
)
def test_send_time_is_rfc_3339_with_up_to_nanoseconds(send_time, expected):
    event = parse({"senderPhoneNumber": "+15550001111", "text": "hi", "messageId": "u1", "sendTime": send_time})
    assert (event.time.isoformat() if event.time else None) == expected
