"""Only its own messages (DESIGN §3.9): events about a message another system sent
are recorded by track_delivery and never acted on by revoke_expired or send_fallbacks,
each a real process on the emulators, against the fake RBM platform and the fake Twilio."""

from datetime import timedelta

import pytest
import requests

from functions import events, store
from functions.model import Fallback, Message, State
from tests.support import AGENT, SWEEP_ENV, wait_for

# Every event type track_delivery acts on, in an order that would make a tracked message due.
EVENTS = ("TTL_EXPIRATION_REVOKE_FAILED", "TTL_EXPIRATION_REVOKED", "DELIVERED", "READ")


def event(event_type: str, message_id: str, n: int) -> dict:
    server = event_type.startswith("TTL_")
    return {
        "phoneNumber" if server else "senderPhoneNumber": "+447700900321",
        "eventType": event_type,
        "eventId": f"{message_id}-e{n}",
        "messageId": message_id,
        "agentId": AGENT,
        "sendTime": f"2026-01-01T00:0{n}:00Z",
    }


@pytest.fixture
def sweeps(functions, firestore, rbm, sms_env):
    env = {"RBM_API_ENDPOINT": rbm.url, **sms_env, **SWEEP_ENV}
    processes = [functions("revoke_expired", env=env), functions("send_fallbacks", env=env)]

    def run() -> list[dict]:
        answers = [requests.post(p.url, json={}, timeout=120) for p in processes]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        return [a.json() for a in answers]

    return run


def test_events_about_another_systems_messages_are_recorded_and_never_acted_on(subscriber, sweeps, rbm, twilio):
    send = subscriber("track_delivery")
    # Each prefix of EVENTS on its own message: every state an untracked message can reach.
    cases = {f"theirs-{k}": EVENTS[:k] for k in range(1, len(EVENTS) + 1)}
    for message_id, types in cases.items():
        for n, event_type in enumerate(types):
            payload = event(event_type, message_id, n)
            send(payload, **events.parse(payload).attributes())
    wait_for(lambda: all((m := store.get_message(i)) and len(m.applied) == len(t) for i, t in cases.items()))
    summaries = sweeps() + sweeps()

    assert rbm.count("revoke") == 0 and rbm.count("create") == 0
    assert twilio.count() == 0
    assert [s["scanned"] for s in summaries] == [0, 0, 0, 0]  # never due: no sweep scans them
    for message_id in cases:
        m = store.get_message(message_id)
        assert (m.tracked, m.fallback, m.next_action_at, m.fallback_at) == (False, Fallback.NONE, None, None)
    assert store.get_message("theirs-1").state is State.REVOKE_FAILED  # the state is still recorded


def test_a_legacy_untracked_message_that_is_due_is_dropped_from_the_sweeps_at_its_first_claim(sweeps, rbm, twilio):
    """Written before untracked messages were kept from becoming due."""
    past = store.now() - timedelta(seconds=1)
    legacy = Message(
        "legacy-1",
        "+447700900654",
        AGENT,
        state=State.REVOKE_FAILED,
        fallback=Fallback.DUE,
        fallback_text="sms",
        tracked=False,
        next_action_at=past,
        fallback_at=past,
    )
    store.update_message(legacy.message_id, lambda _: legacy)

    first = sweeps()
    assert [(s["scanned"], s["skipped"]) for s in first] == [(1, 1), (0, 0)]  # the revoke claim dropped it from both
    assert [s["scanned"] for s in sweeps()] == [0, 0]
    after = store.get_message("legacy-1")
    assert (after.next_action_at, after.fallback_at, after.lease_owner) == (None, None, None)
    assert rbm.count("revoke") == 0 and rbm.count("create") == 0
    assert twilio.count() == 0
