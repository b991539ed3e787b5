"""An opt-out names its agent in either form, outlives retention and survives an erasure;
conversation ids are keyed. Real processes, the emulators and the fakes."""

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
import requests

from functions import config, conversations, events, store
from functions.model import Conversation, Fallback, Message, State, UserMessage, conversation_id
from local.processes import PROJECT
from tests.integration.test_sweeps import SWEEP_ENV, seed, sweep
from tests.support import AGENT, expire, wait_for

PHONE = "+447700900000"  # seed() gives message 0 this phone
SHORT, FULL = "x_agent", "x_agent@rbm.goog"


def unsubscribe(agent_id, event_id="e-out"):
    return {"senderPhoneNumber": PHONE, "agentId": agent_id, "eventType": "UNSUBSCRIBE", "eventId": event_id}


def push(send, payload):
    return send(payload, **events.parse(payload).attributes())


@pytest.fixture
def sender(functions, rbm):
    """send_message with RBM_AGENT_ID in the form given; `sender(agent)(body...)` answers."""

    def start(agent):
        process = functions(
            "send_message", env={"RBM_API_ENDPOINT": rbm.url, "RBM_AGENT_ID": agent, "RBM_RETRY_SECONDS": "1"}
        )
        return lambda **body: requests.post(
            process.url,
            json={"phone": PHONE, "content": {"text": "hi"}, "message_id": str(uuid.uuid4()), **body},
            timeout=30,
        )

    return start


def test_an_unsubscribe_from_the_full_agent_id_stops_rcs_and_sms_of_the_configured_short_one(
    subscriber, sender, functions, rbm, sms_env, twilio
):
    inbound = subscriber("record_inbound", env={"RBM_AGENT_ID": SHORT})
    send = sender(SHORT)
    fallbacks = functions("send_fallbacks", env={**sms_env, **SWEEP_ENV, "RBM_AGENT_ID": SHORT})
    [due] = seed(1, state=State.REVOKED, fallback=Fallback.DUE)
    store.change_message(due, lambda m: Message.from_doc(m.to_doc() | {"agent_id": SHORT}))  # stored as configured

    push(inbound, unsubscribe(FULL))
    wait_for(lambda: conversations.opted_out(SHORT, PHONE) and conversations.opted_out(FULL, PHONE))
    refused = send()
    assert refused.status_code == 409 and "unsubscribed" in refused.json()["error"]
    assert rbm.count("create") == 0
    assert sweep(fallbacks)["cancelled"] == 1
    assert store.get_message(due).fallback is Fallback.CANCELLED and twilio.sent == []


@pytest.mark.parametrize("configured", [SHORT, FULL])
def test_rbm_calls_take_the_short_form_whichever_form_is_configured(sender, rbm, firestore, configured):
    answer = sender(configured)(revoke_after_seconds=60).json()
    assert answer["state"] == "SENT"
    [call] = rbm.requests
    assert call["agent_id"] == SHORT
    assert store.get_message(answer["message_id"]).agent_id == FULL  # stored, published and logged canonical


def test_an_opt_out_outlives_retention_and_everything_else_expires(subscriber, sender, rbm, functions, sms_env, twilio):
    inbound = subscriber("record_inbound")
    push(inbound, unsubscribe(AGENT))
    push(inbound, {"senderPhoneNumber": PHONE, "agentId": AGENT, "messageId": "u-1", "text": "why?"})
    push(inbound, {"senderPhoneNumber": "+447700900001", "agentId": AGENT, "messageId": "u-2", "text": "hello"})
    wait_for(lambda: conversations.opted_out(AGENT, PHONE))
    wait_for(lambda: conversations.refs(AGENT, "+447700900001")[0].get().exists)
    wait_for(lambda: len(list(conversations.refs(AGENT, PHONE)[0].collection("messages").stream())) == 1)

    later = store.now() + timedelta(days=config.retention_days() + 1)
    deleted = expire(store.client(), later)
    # The opted-in user's conversation and every user message went; the opt-out stays.
    assert len(deleted) == 3 and conversations.refs(AGENT, PHONE)[0].path not in deleted
    assert conversations.opted_out(AGENT, PHONE)
    refused = sender(AGENT)()
    assert refused.status_code == 409 and rbm.count("create") == 0
    [due] = seed(1, state=State.REVOKED, fallback=Fallback.DUE)  # an SMS due after the deletion: still cancelled
    fallbacks = functions("send_fallbacks", env={**sms_env, **SWEEP_ENV})
    assert sweep(fallbacks)["cancelled"] == 1 and store.get_message(due).fallback is Fallback.CANCELLED
    assert twilio.sent == []


def cli(*args, without=()):
    env = {k: v for k, v in os.environ.items() if k not in without} | {"GOOGLE_CLOUD_PROJECT": PROJECT}
    return subprocess.run(
        [sys.executable, "-m", "functions", *args], capture_output=True, text=True, env=env, timeout=60
    )


def everything():
    """Every document of the database, with the collections below it: (path, fields)."""
    found = []

    def walk(collection):
        for ref in collection.list_documents():
            snapshot = ref.get()
            if snapshot.exists:
                found.append((ref.path, snapshot.to_dict()))
            for sub in ref.collections():
                walk(sub)

    for collection in store.client().collections():
        walk(collection)
    return found


def converse(agent, phone, opted_out, message_id):
    ref = conversations.refs(agent, phone)[0]
    store.update(ref, Conversation, lambda _: Conversation(agent, phone, opted_out=opted_out))
    user_message = ref.collection("messages").document(message_id)
    store.update(
        user_message, UserMessage, lambda _: UserMessage(message_id, agent, store.now(), "text", {"text": "hi"})
    )


def test_erasure_removes_a_number_and_keeps_only_a_keyed_opt_out_marker(firestore, sender, rbm):
    other = "+447700900555"
    seed(1)  # msg-00000, to PHONE from the tests' agent
    store.update_message("m-b", lambda _: Message("m-b", PHONE, "b@rbm.goog", state=State.SENT))
    store.update_message("m-other", lambda _: Message("m-other", other, FULL, state=State.SENT))
    converse(FULL, PHONE, True, "u-1")
    converse("b@rbm.goog", PHONE, False, "u-2")
    converse(FULL, other, True, "u-3")

    only_b = cli("erase", PHONE, "--agent", "b")
    assert only_b.returncode == 0, only_b.stderr
    assert json.loads(only_b.stdout) == {
        "messages": 1,
        "outcome_events": 1,  # m-b:1, its SENT event, which carries the phone
        "conversations": 1,
        "user_messages": 1,
        "opt_out_markers": 0,
    }
    erased = cli("erase", PHONE)
    assert erased.returncode == 0, erased.stderr
    assert json.loads(erased.stdout) == {
        "messages": 1,
        "outcome_events": 0,
        "conversations": 1,
        "user_messages": 1,
        "opt_out_markers": 1,
    }

    left = everything()
    assert not [path for path, fields in left if PHONE in json.dumps(fields, default=str)]
    assert {path.rsplit("/", 1)[-1] for path, _ in left if path.startswith(config.messages_collection())} == {"m-other"}
    keyed = conversation_id(FULL, PHONE, config.conversation_id_key())
    [marker] = [fields for path, fields in left if path.endswith(keyed)]
    assert marker["opted_out"] is True and marker["expire_at"] is None and marker["phone"] == ""
    assert conversations.opted_out(SHORT, PHONE) and not conversations.opted_out("b", PHONE)
    assert conversations.opted_out(FULL, other)  # another number untouched
    assert sender(SHORT)().status_code == 409 and rbm.count("create") == 0


def test_an_erasure_run_without_the_key_still_removes_the_keyed_conversation_and_keeps_the_opt_out(firestore):
    """The operator's shell may lack CONVERSATION_ID_KEY (a secret): the conversations
    found by the number are erased whatever their id, and the opt-out still holds."""
    converse(FULL, PHONE, True, "u-1")
    erased = cli("erase", PHONE, without=("CONVERSATION_ID_KEY",))
    assert erased.returncode == 0, erased.stderr
    assert json.loads(erased.stdout)["conversations"] == 1
    assert not [path for path, fields in everything() if PHONE in json.dumps(fields, default=str)]
    assert conversations.opted_out(SHORT, PHONE)


def test_unkeyed_conversations_are_honoured_then_moved_to_keyed_ids(firestore, subscriber):
    unkeyed = store.conversations().document(conversation_id(FULL, PHONE))
    store.update(unkeyed, Conversation, lambda _: Conversation(FULL, PHONE, opted_out=True))
    unkeyed.update({"expire_at": store.now()})  # as the code before wrote it: with a TTL
    keyed = conversations.refs(FULL, PHONE)[0]
    assert keyed.id != unkeyed.id and conversations.opted_out(FULL, PHONE)

    inbound = subscriber("record_inbound")  # a user message before the move: the opt-out carries over
    push(inbound, {"senderPhoneNumber": PHONE, "agentId": FULL, "messageId": "u-1", "text": "hello"})
    wait_for(lambda: keyed.get().exists)
    assert keyed.get().get("opted_out") is True and unkeyed.get().exists

    store.update(
        store.conversations().document(conversation_id("b@rbm.goog", PHONE)),
        Conversation,
        lambda _: Conversation("b@rbm.goog", PHONE, opted_out=True),
    )
    moved = cli("migrate-conversations")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout) == {"moved": 2}
    assert not unkeyed.get().exists and keyed.get().get("opted_out") is True
    expire(store.client(), store.now() + timedelta(days=config.retention_days() + 1))
    assert conversations.opted_out(FULL, PHONE) and conversations.opted_out("b", PHONE)
