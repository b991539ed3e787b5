"""send_message's request rules, with no I/O."""

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from functions.model import Fallback, Message, State
from functions.outbound import InvalidRequest, conflict, parse

OK = {"phone": "+14155550123", "content": {"text": "hi"}}


def test_minimal_request_gets_a_generated_uuid_and_the_default_agent():
    wanted = parse(OK, "default-agent")
    assert wanted.agent_id == "default-agent@rbm.goog" and len(wanted.message_id) == 36
    assert parse(OK | {"message_id": wanted.message_id.upper()}, "a").message_id == wanted.message_id


def test_record_is_pending_with_its_deadline_and_fallback():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    wanted = parse(OK | {"revoke_after_seconds": 60, "fallback": {"text": "sms", "time_sensitive": True}}, "a")
    record = wanted.record(now, resend_after=30)
    assert (record.state, record.fallback, record.time_sensitive) == (State.PENDING, Fallback.WAITING, True)
    assert record.revoke_at == now + timedelta(seconds=60) and record.next_action_at == now + timedelta(seconds=30)
    assert parse(OK, "a").record(now, 30).fallback is Fallback.NONE


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"phone": "+0123456789"}, "E.164"),
        ({"phone": "+1 415 555 0123"}, "E.164"),
        ({"content": "hi"}, "content"),
        ({"message_id": 5}, "UUID"),
        ({"revoke_after_seconds": 9}, "revoke_after_seconds"),
        ({"revoke_after_seconds": 31 * 86400}, "revoke_after_seconds"),
        ({"revoke_after_seconds": True}, "revoke_after_seconds"),
        ({"traffic_type": "authentication"}, "traffic_type"),
        ({"traffic_type": ["AUTHENTICATION"]}, "traffic_type"),
        ({"traffic_type": {}}, "traffic_type"),
        ({"fallback": "text"}, "fallback"),
        ({"fallback": {}}, "fallback.text"),
        ({"fallback": {"text": "x", "time_sensitive": 1}}, "time_sensitive"),
    ],
)
def test_each_rule_names_what_is_wrong(change, reason):
    with pytest.raises(InvalidRequest, match=reason):
        parse(OK | change, "a")


@pytest.mark.parametrize(
    "text, max_segments, reason",
    [
        ("😀" * 801, None, "fallback.text is 1,602 UCS-2 units in 25 segments"),  # 801 code points: under the old limit
        ("[]" * 801, None, "fallback.text is 3,204 GSM-7 units in 22 segments"),
        ("a" * 1601, None, "fallback.text is 1,601 GSM-7 units"),
        (
            "code ✅ " * 11,
            1,
            "fallback.text is 77 UCS-2 units in 2 segments; the SMS provider takes at most 1,600 units in 1 segment",
        ),
    ],
)
def test_a_fallback_text_the_sms_provider_would_refuse_is_refused_with_its_count(text, max_segments, reason):
    with pytest.raises(InvalidRequest) as refused:
        parse(OK | {"fallback": {"text": text}}, "a", max_segments)
    assert str(refused.value).startswith(reason)


def test_the_record_keeps_the_segments_the_fallback_costs():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse(OK | {"fallback": {"text": "😀" * 800}}, "a").record(now, 30).fallback_segments == 25
    assert parse(OK | {"fallback": {"text": "a" * 161}}, "a", 2).record(now, 30).fallback_segments == 2
    assert parse(OK, "a").record(now, 30).fallback_segments is None


def test_no_agent_anywhere_is_refused():
    with pytest.raises(InvalidRequest, match="agent_id"):
        parse(OK, "")


def card(**content) -> dict:
    return {"title": "t", "description": "d", **content}


def reply(text="ok") -> dict:
    return {"reply": {"text": text, "postbackData": "p"}}


# Input that can't be stored, or that RBM documents it refuses: 400 naming the field.
@pytest.mark.parametrize(
    "change, reason",
    [
        ({"fallback": {"text": "see you \ud83d"}}, "fallback.text is not valid Unicode"),
        ({"content": {"text": "half an emoji \ude00"}}, "content.text is not valid Unicode"),
        (
            {"content": {"text": "x", "suggestions": [reply("\ud83d")]}},
            r"content.suggestions\[0\].reply.text is not valid",
        ),
        ({"agent_id": "agent\udfff"}, "agent_id is not valid Unicode"),
        ({"content": {"text": "x", "\ud83d": 1}}, "content has a field name that is not valid Unicode"),
        ({"content": {"text": "x" * 3073}}, "content.text must be text of at most 3072"),
        ({"content": {"text": "x", "suggestions": [reply()] * 12}}, "content.suggestions must be a list of 0 to 11"),
        (
            {"content": {"text": "x", "suggestions": [reply("x" * 26)]}},
            r"content.suggestions\[0\].reply.text must be text of at most 25",
        ),
        (
            {
                "content": {
                    "text": "x",
                    "suggestions": [{"action": {"text": "x" * 26, "openUrlAction": {"url": "https://a"}}}],
                }
            },
            r"content.suggestions\[0\].action.text must be text of at most 25",
        ),
        (
            {"content": {"richCard": {"standaloneCard": {"cardContent": card(title="x" * 201)}}}},
            "content.richCard.standaloneCard.cardContent.title must be text of at most 200",
        ),
        (
            {"content": {"richCard": {"standaloneCard": {"cardContent": card(description="x" * 2001)}}}},
            "cardContent.description must be text of at most 2000",
        ),
        (
            {"content": {"richCard": {"standaloneCard": {"cardContent": card(suggestions=[reply()] * 5)}}}},
            "cardContent.suggestions must be a list of 0 to 4",
        ),
        (
            {"content": {"richCard": {"carouselCard": {"cardWidth": "MEDIUM", "cardContents": [card()]}}}},
            "content.richCard.carouselCard.cardContents must be a list of 2 to 10",
        ),
        (
            {"content": {"richCard": {"carouselCard": {"cardContents": [card()] * 11}}}},
            "cardContents must be a list of 2 to 10",
        ),
        (
            {"content": {"richCard": {"carouselCard": {"cardContents": [card(), card(title="x" * 201)]}}}},
            r"cardContents\[1\].title must be text of at most 200",
        ),
        (
            {
                "content": {
                    "richCard": {"carouselCard": {"cardContents": [card(), card(suggestions=[reply("x" * 26)])]}}
                }
            },
            r"cardContents\[1\].suggestions\[0\].reply.text must be text of at most 25",
        ),
        (
            {"content": {"suggestions": [reply()]}},
            "exactly one of text, fileName, uploadedRbmFile, richCard, contentInfo",
        ),
        ({"content": {"text": "x", "contentInfo": {"fileUrl": "https://a/b.png"}}}, "exactly one of"),
        (
            {"content": {"richCard": {"standaloneCard": {"cardContent": card(media={"x": "y" * 250_000})}}}},
            "over RBM's 250,000 bytes",
        ),
        ({"content": {"text": "x", "extra": {"": 1}}}, "content.extra has a field name Firestore can't store"),
        ({"content": {"text": "x", "__name__": 1}}, "content has a field name Firestore can't store"),
        ({"content": {"text": "x", "extra": [[1]]}}, "content.extra holds an array directly in an array"),
        ({"content": {"text": "x", "k" * 1500: 1}}, "is a field path over 1500 bytes"),
    ],
)
def test_what_cannot_be_stored_or_sent_is_refused_naming_the_field(change, reason):
    with pytest.raises(InvalidRequest, match=reason):
        parse(OK | change, "a")


def nested(depth: int) -> dict:
    value = "leaf"
    for _ in range(depth):
        value = {"n": value}
    return value


def test_nesting_deeper_than_firestore_stores_is_refused_before_it_is_walked():
    """Firestore keeps maps and arrays at most 20 deep, the document's own field counting as 1."""
    assert parse(OK | {"content": {"text": "x", "extra": nested(18)}}, "a")
    with pytest.raises(InvalidRequest, match="nests maps and arrays more than 20 deep"):
        parse(OK | {"content": {"text": "x", "extra": nested(19)}}, "a")
    with pytest.raises(InvalidRequest, match="more than 20 deep"):
        parse(OK | {"content": {"text": "x", "extra": nested(5000)}}, "a")  # no RecursionError either


@pytest.mark.parametrize(
    "content",
    [
        {"text": "x" * 3072, "suggestions": [reply("x" * 25)] * 11},
        {"text": "😀" * 3072},  # characters, not bytes
        {"uploadedRbmFile": {"fileName": "files/abc"}},
        {"contentInfo": {"fileUrl": "https://example.com/a.png"}},
        {
            "richCard": {
                "standaloneCard": {
                    "cardContent": card(title="x" * 200, description="x" * 2000, suggestions=[reply()] * 4)
                }
            }
        },
        {"richCard": {"carouselCard": {"cardWidth": "MEDIUM", "cardContents": [card()] * 10}}},
        {"text": "hi", "futureField": {"__": [1, {"a": [2]}]}},  # unknown fields go to RBM as they are
    ],
)
def test_content_at_the_documented_limits_is_accepted(content):
    assert parse(OK | {"content": content}, "a").content == content


# A reused message_id: the same request answers the stored message, any other is refused.
NOW = datetime(2026, 1, 1, tzinfo=UTC)
FULL = OK | {
    "message_id": "6f1c1c52-5d6e-4c54-9b8a-3e4c1f0d2a11",
    "revoke_after_seconds": 300,
    "traffic_type": "AUTHENTICATION",
    "fallback": {"text": "code 1", "time_sensitive": True},
}


def stored(body=FULL) -> Message:
    return parse(body, "agent").record(NOW, 60)


def test_the_same_request_has_the_same_fingerprint_whatever_its_spelling():
    same = {
        "fallback": {"time_sensitive": True, "text": "code 1"},
        "content": {"text": "hi"},
        "agent_id": "agent",
        "traffic_type": "AUTHENTICATION",
        "revoke_after_seconds": 300,
        "phone": "+14155550123",
        "message_id": FULL["message_id"].upper(),
    }
    assert conflict(stored(), parse(same, "other-default")) is None
    assert parse(OK, "a").fingerprint == parse(OK | {"fallback": None, "agent_id": "a"}, "b").fingerprint
    assert (
        parse(OK | {"fallback": {"text": "t"}}, "a").fingerprint
        == parse(OK | {"fallback": {"text": "t", "time_sensitive": False}}, "a").fingerprint
    )


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"content": {"text": "something else"}}, "different request"),
        ({"revoke_after_seconds": 600}, "different request"),
        ({"revoke_after_seconds": None}, "different request"),
        ({"traffic_type": "TRANSACTION"}, "different request"),
        ({"fallback": {"text": "code 2", "time_sensitive": True}}, "different request"),
        ({"fallback": {"text": "code 1"}}, "different request"),
        ({"fallback": None}, "different request"),
        ({"phone": "+14155550000"}, "another recipient"),
        ({"agent_id": "other-agent"}, "another recipient"),
    ],
)
def test_a_reused_message_id_with_any_other_request_is_a_conflict(change, reason):
    assert reason in conflict(stored(), parse(FULL | change, "agent"))


def test_a_message_id_another_sender_used_is_a_conflict_even_for_the_same_recipient():
    theirs = Message(FULL["message_id"], FULL["phone"], "agent", tracked=False)
    assert "another sender" in conflict(theirs, parse(FULL, "agent"))


def test_a_document_stored_before_fingerprints_gets_its_fingerprint_from_its_fields():
    legacy = stored()
    legacy.fingerprint = None
    assert conflict(legacy, parse(FULL, "agent")) is None
    assert "different request" in conflict(legacy, parse(FULL | {"revoke_after_seconds": 301}, "agent"))
    assert "different request" in conflict(legacy, parse(FULL | {"content": {"text": "other"}}, "agent"))


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"client_ref": 7}, "client_ref"),
        ({"client_ref": "x" * 129}, "client_ref"),
        ({"metadata": ["a"]}, "metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(11)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"": "v"}}, "metadata"),
        ({"metadata": {"__k__": "v"}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"metadata": {"k": "v" * 257}}, "metadata"),
    ],
)
def test_client_ref_and_metadata_beyond_their_limits_are_refused_naming_the_field(change, reason):
    with pytest.raises(InvalidRequest, match=reason):
        parse(OK | change, "a")


def test_client_ref_and_metadata_are_stored_and_part_of_the_request():
    at_limits = {"client_ref": "r" * 128, "metadata": {f"{i}" + "k" * 63: "v" * 256 for i in range(10)}}
    record = parse(FULL | at_limits, "agent").record(NOW, 60)
    assert (record.client_ref, record.metadata) == (at_limits["client_ref"], at_limits["metadata"])
    assert "different request" in conflict(stored(), parse(FULL | {"client_ref": "r"}, "agent"))
    assert "different request" in conflict(stored(), parse(FULL | {"metadata": {"k": "v"}}, "agent"))
    assert "different request" in conflict(record, parse(FULL, "agent"))
    assert conflict(record, parse(FULL | at_limits, "agent")) is None


def test_a_fingerprint_stored_before_client_ref_and_metadata_still_matches_its_retry():
    """The canonical JSON of a request without them is the one stored before they existed."""
    canonical = {
        "phone": FULL["phone"],
        "agent_id": "agent@rbm.goog",  # canonical, as stored since agent ids are
        "content": FULL["content"],
        "traffic_type": FULL["traffic_type"],
        "revoke_after_seconds": FULL["revoke_after_seconds"],
        "fallback_text": "code 1",
        "time_sensitive": True,
    }
    before = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert parse(FULL, "agent").fingerprint == before
    assert parse(FULL | {"metadata": {}}, "agent").fingerprint == before
