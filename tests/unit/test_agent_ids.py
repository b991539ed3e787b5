"""Agent ids in one canonical form, keyed conversation ids, and what the TTL policy may delete: no I/O."""

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
import requests

from functions import agents, config
from functions.events import parse as parse_event
from functions.model import BATCHES_COLLECTION, Batch, Conversation, Message, conversation_id, conversation_of, expiry
from functions.outbound import InvalidRequest, conflict, parse
from functions.rbm import RbmClient
from local.fake_rbm import FakeRbm

PHONE = "+14155550123"
KEY = b"k" * 32


@pytest.mark.parametrize("given", ["x_agent", "x_agent@rbm.goog", "x_agent@RBM.GOOG"])
def test_either_form_gives_one_canonical_id_and_one_api_form(given):
    assert agents.canonical(given) == "x_agent@rbm.goog"
    assert agents.api_form(given) == "x_agent"
    assert agents.spellings(given) == ("x_agent@rbm.goog", "x_agent")


def test_no_agent_stays_no_agent():
    assert agents.canonical("") == "" and agents.api_form("") == ""


def test_every_entry_gives_the_canonical_form(monkeypatch):
    monkeypatch.setenv("RBM_AGENT_ID", "x_agent")
    assert config.agent_id() == "x_agent@rbm.goog"
    assert parse({"phone": PHONE, "content": {"text": "hi"}}, config.agent_id()).agent_id == "x_agent@rbm.goog"
    assert parse({"phone": PHONE, "content": {"text": "hi"}, "agent_id": "y"}, "x").agent_id == "y@rbm.goog"
    event = parse_event({"senderPhoneNumber": PHONE, "eventType": "UNSUBSCRIBE", "eventId": "e", "agentId": "x_agent"})
    assert event.agent_id == "x_agent@rbm.goog" and event.attributes()["agent_id"] == "x_agent@rbm.goog"
    assert parse_event({"senderPhoneNumber": PHONE, "eventType": "READ", "eventId": "e"}).agent_id is None
    assert Message.from_doc({"message_id": "m", "phone": PHONE, "agent_id": "x_agent"}).agent_id == "x_agent@rbm.goog"


@pytest.mark.parametrize("given", ["x_agent ", " x_agent", "x agent", "x_agent@rbm.goog\n", "x@y@rbm.goog", "a/b"])
def test_an_agent_id_no_event_can_carry_is_refused_so_it_cannot_miss_the_users_opt_out(given):
    """An id with whitespace, a second `@` or a `/` names no agent an event can come
    from: its conversation (and opt-out) would be another document, so a refused RCS
    would still send the SMS to a user who opted out. 400 naming agent_id instead."""
    with pytest.raises(InvalidRequest, match="agent_id"):
        parse({"phone": PHONE, "content": {"text": "hi"}, "agent_id": given}, "x_agent")


def test_a_message_stored_before_ids_were_canonical_is_still_the_same_request():
    """Its agent id and fingerprint are those of the agent id as its request gave it."""
    body = {"phone": PHONE, "content": {"text": "hi"}, "message_id": "6b3c3a1e-4f43-4a5e-9f1e-0c5a1d2b3c4d"}
    as_given = dataclasses.replace(parse(body, "x_agent"), agent_id="x_agent")  # what the code before stored
    stored = Message.from_doc(as_given.record(datetime(2026, 1, 1, tzinfo=UTC), 60).to_doc())
    for configured in ("x_agent", "x_agent@rbm.goog"):
        assert conflict(stored, parse(body, configured)) is None
    assert "different request" in (conflict(stored, parse(body | {"content": {"text": "bye"}}, "x_agent")) or "")
    assert "another recipient" in (conflict(stored, parse(body, "y_agent")) or "")


def test_conversation_ids_are_keyed_and_name_one_agent_in_either_form():
    keyed = conversation_id("x_agent@rbm.goog", PHONE, KEY)
    assert conversation_id("x_agent", PHONE, KEY) == keyed and len(keyed) == 32
    assert conversation_id("x_agent", PHONE, b"another key") != keyed
    # Without a key: the unkeyed id conversations had before, found by sha256 alone.
    unkeyed = hashlib.sha256(f"x_agent@rbm.goog|{PHONE}".encode()).hexdigest()[:32]
    assert conversation_id("x_agent", PHONE) == unkeyed != keyed


def test_an_opt_out_and_a_batch_are_never_given_a_ttl_and_everything_else_is():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    opted_out = Conversation("a@rbm.goog", PHONE, opted_out=True).to_doc()
    assert expiry(opted_out, now, config.conversations_collection()) is None
    retained = now + timedelta(days=config.retention_days())
    assert expiry(Conversation("a@rbm.goog", PHONE).to_doc(), now, config.conversations_collection()) == retained
    assert expiry(Message("m", PHONE, "a@rbm.goog").to_doc(), now, config.messages_collection()) == retained
    # A batch's id derives its messages' ids: freed before them, a new batch would find them in place.
    assert expiry(Batch("b", "f", 1).to_doc(), now, BATCHES_COLLECTION) is None


def test_the_keyed_conversation_decides_then_the_unkeyed_one_then_a_new_one():
    keyed, unkeyed = Conversation("a@rbm.goog", PHONE), Conversation("a@rbm.goog", PHONE, opted_out=True)
    assert conversation_of([keyed, unkeyed], "a@rbm.goog", PHONE) is keyed
    assert conversation_of([None, unkeyed], "a@rbm.goog", PHONE) is unkeyed
    assert conversation_of([None, None], "a@rbm.goog", PHONE) == Conversation("a@rbm.goog", PHONE)
    marker = Conversation("a@rbm.goog", "", opted_out=True)  # left by an erasure: no phone
    assert conversation_of([marker], "a@rbm.goog", PHONE) == Conversation("a@rbm.goog", PHONE, opted_out=True)


@pytest.mark.parametrize("stored", ["x_agent", "x_agent@rbm.goog"])
def test_rbm_calls_take_the_part_before_rbm_goog(stored):
    with FakeRbm() as rbm:
        client = RbmClient(requests.Session(), rbm.url, 1.0)
        client.create_message(PHONE, "m1", stored, {"text": "hi"})
        client.revoke_message(PHONE, "m1", stored)
        assert [r["agent_id"] for r in rbm.requests] == ["x_agent", "x_agent"]
