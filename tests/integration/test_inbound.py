"""record_inbound's opt-out, honoured by send_message and send_fallbacks: real processes, emulators and fakes."""

import uuid

import pytest
import requests

from functions import conversations, events, store
from functions.model import Fallback, State
from tests.integration.test_sweeps import SWEEP_ENV, seed, sweep
from tests.support import wait_for

PHONE, AGENT = "+447700900000", "agent@rbm.goog"  # seed() gives message 0 this phone


def push(send, payload):
    return send(payload, **events.parse(payload).attributes())


def sent_at(minute):
    """A sendTime field, or none: the relay then stamps the event when it processes it."""
    return {"sendTime": f"2026-01-01T00:{minute:02d}:00Z"} if minute is not None else {}


def typed(message_id, text, minute=None):
    return {"senderPhoneNumber": PHONE, "agentId": AGENT, "messageId": message_id, "text": text} | sent_at(minute)


def user_event(event_type, event_id, minute=None):
    return {"senderPhoneNumber": PHONE, "agentId": AGENT, "eventType": event_type, "eventId": event_id} | sent_at(
        minute
    )


def processed(send, event_id, times):
    """Whether record_inbound has processed the event `event_id` `times` times (one log line each)."""
    return sum(f'"{event_id}"' in line for line in send.process.read_log().splitlines()) >= times


@pytest.fixture
def inbound(subscriber):
    return subscriber("record_inbound")


def test_a_typed_stop_is_honoured_by_send_message_and_the_sweep_and_start_undoes_it(
    inbound, functions, rbm, sms_env, twilio
):
    sender = functions(
        "send_message", env={"RBM_API_ENDPOINT": rbm.url, "RBM_AGENT_ID": AGENT, "RBM_RETRY_SECONDS": "1"}
    )
    fallbacks = functions("send_fallbacks", env={**sms_env, **SWEEP_ENV})
    [due] = seed(1, state=State.REVOKED, fallback=Fallback.DUE)

    def send_message():
        return requests.post(
            sender.url, json={"phone": PHONE, "content": {"text": "hi"}, "message_id": str(uuid.uuid4())}, timeout=30
        )

    push(inbound, typed("u-stop", "  stop ", minute=1))
    wait_for(lambda: conversations.opted_out(AGENT, PHONE))
    refused = send_message()
    assert refused.status_code == 409 and "unsubscribed" in refused.json()["error"]
    assert sweep(fallbacks)["cancelled"] == 1
    assert store.get_message(due).fallback is Fallback.CANCELLED and twilio.sent == [] and rbm.count("create") == 0

    push(inbound, typed("u-start", "START", minute=2))
    wait_for(lambda: not conversations.opted_out(AGENT, PHONE))
    assert send_message().status_code == 200 and rbm.count("create") == 1
    stored = {s.id: s.get("text") for s in conversations.refs(AGENT, PHONE)[0].collection("messages").stream()}
    assert stored == {"u-stop": "  stop ", "u-start": "START"}  # keywords are stored as messages too


@pytest.mark.parametrize("with_send_time", [False, True], ids=["without sendTime", "with sendTime"])
def test_a_redelivered_old_opt_out_changes_nothing(inbound, with_send_time):
    minute = (lambda m: m) if with_send_time else (lambda m: None)
    push(inbound, user_event("UNSUBSCRIBE", "e-out", minute(1)))
    wait_for(lambda: conversations.opted_out(AGENT, PHONE))
    push(inbound, user_event("SUBSCRIBE", "e-in", minute(2)))
    wait_for(lambda: not conversations.opted_out(AGENT, PHONE))
    push(inbound, user_event("UNSUBSCRIBE", "e-out", minute(1)))  # redelivered
    wait_for(lambda: processed(inbound, "e-out", 2))
    doc = conversations.refs(AGENT, PHONE)[0].get().to_dict()
    assert doc["opted_out"] is False and doc["applied"] == ["e-out", "e-in"]

    push(inbound, typed("u-stop", "STOP", minute(3)))
    wait_for(lambda: conversations.opted_out(AGENT, PHONE))
    push(inbound, typed("u-start", "start", minute(4)))
    wait_for(lambda: not conversations.opted_out(AGENT, PHONE))
    push(inbound, typed("u-stop", "STOP", minute(3)))  # redelivered
    wait_for(lambda: processed(inbound, "u-stop", 2))
    assert conversations.opted_out(AGENT, PHONE) is False
