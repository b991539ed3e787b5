"""What each RBM answer or failure means, through the real processes: send_message,
revoke_expired and send_fallbacks against the fake RBM platform, the fake Twilio
and the Firestore emulator.

Every test ends by counting, for its messages, what was lost (a message with no
document, or stuck where nothing will move it) and what was duplicated (a user
with two SMS, or an SMS while the RCS message is still queued): both must be 0.
"""

import threading
import time
import uuid
from datetime import timedelta

import pytest
import requests

from functions import store
from functions.model import Fallback, Message, State
from tests.support import AGENT, SWEEP_ENV, wait_for

PHONE = "+447700900555"
CONTENT = {"text": "Your code is 123456"}
FALLBACK = {"text": "Your code is 123456"}
ENV = {**SWEEP_ENV, "LEASE_SECONDS": "5", "PENDING_RESEND_SECONDS": "0"}


@pytest.fixture
def relay(functions, firestore, rbm, sms_env):
    """The three functions a message meets, as processes; `relay.send(**body)`,
    `relay.revoke()` and `relay.fallbacks()` call them."""

    class Relay:
        def __init__(self):
            env = {"RBM_API_ENDPOINT": rbm.url, **ENV}
            self.send_message = functions("send_message", env=env)
            self.revoke_expired = functions("revoke_expired", env=env)  # no SMS provider: send_fallbacks sends
            self.send_fallbacks = functions("send_fallbacks", env={**env, **sms_env})

        def send(self, **body) -> requests.Response:
            body = {"phone": PHONE, "content": CONTENT, "message_id": str(uuid.uuid4()), **body}
            return requests.post(self.send_message.url, json=body, timeout=90)

        def revoke(self) -> dict:
            return _sweep(self.revoke_expired)

        def fallbacks(self) -> dict:
            return _sweep(self.send_fallbacks)

    return Relay()


def _sweep(process) -> dict:
    response = requests.post(process.url, json={}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def get(message_id: str) -> Message:
    return store.get_message(message_id)


def seed_pending(message_id: str, revoke_in: float = 600) -> None:
    """A PENDING message whose re-send is due now, as send_message leaves it after a transient failure."""
    now = store.now()
    message = Message(
        message_id,
        PHONE,
        AGENT,
        fallback=Fallback.WAITING,
        fallback_text=FALLBACK["text"],
        content=CONTENT,
        revoke_at=now + timedelta(seconds=revoke_in),
        next_action_at=now - timedelta(seconds=1),
        created_at=now,
    )
    store.messages().document(message_id).set(message.to_doc())


def assert_nothing_lost_nothing_twice(rbm, twilio, message_ids):
    """Lost = 0: every message has its document, and each is SENT at RBM or settled
    with its fallback decided. Duplicates = 0: at most one SMS per user, and none for
    a message RBM still holds or delivered."""
    lost = [m for m in message_ids if store.get_message(m) is None]
    assert lost == []
    sms_to = [s["to"] for s in twilio.sent]
    assert len(sms_to) == len(set(sms_to)), "two SMS to one user"
    for message_id in message_ids:
        if rbm.messages.get(message_id, {}).get("state") in ("queued", "delivered", "read"):
            assert get(message_id).fallback is not Fallback.SENT, "an SMS for a message RBM still holds or delivered"


def in_thread(call):
    """Runs `call` in a thread; `.result()` joins it and returns what it returned (or raises)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except Exception as exc:  # handed to the test, which asserts on it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result():
        thread.join(120)
        assert not thread.is_alive()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    thread.result = result
    return thread


# 409 ALREADY_EXISTS: accepted before


def test_send_message_retried_while_the_first_call_is_in_flight_is_sent_once(relay, rbm, twilio):
    rbm.set_latency("create", PHONE, 3)
    message_id = str(uuid.uuid4())
    first = in_thread(lambda: relay.send(message_id=message_id, revoke_after_seconds=600, fallback=FALLBACK))
    wait_for(lambda: rbm.count("create", message_id=message_id) == 1)  # RBM has it; its answer is still on the way
    rbm.set_latency("create", PHONE, 0)  # the client's retry is answered first
    second = relay.send(message_id=message_id, revoke_after_seconds=600, fallback=FALLBACK)
    assert second.status_code == 200, second.text
    assert (second.json()["state"], second.json()["fallback"]) == ("SENT", "WAITING")
    assert (get(message_id).state, get(message_id).fallback) == (
        State.SENT,
        Fallback.WAITING,
    )  # before the first answer too
    first = first.result()
    for response in (first, second):
        assert response.status_code == 200, response.text
        assert (response.json()["state"], response.json()["fallback"]) == ("SENT", "WAITING")
    stored = get(message_id)
    assert (stored.state, stored.fallback, stored.next_action_at) == (State.SENT, Fallback.WAITING, stored.revoke_at)
    assert [r["status"] for r in rbm.requests if r["kind"] == "create"] == [200, 409]
    assert list(rbm.messages) == [message_id]  # one message queued at RBM
    assert relay.fallbacks()["sent"] == 0
    assert_nothing_lost_nothing_twice(rbm, twilio, [message_id])


def test_a_create_accepted_but_its_answer_lost_is_sent_and_revoked_at_its_deadline(relay, rbm, twilio):
    rbm.drop("create", PHONE)  # RBM queues it, then the connection drops before the answer
    response = relay.send(revoke_after_seconds=10, fallback=FALLBACK)
    assert response.status_code == 200, response.text
    message_id = response.json()["message_id"]
    assert (response.json()["state"], response.json()["fallback"]) == ("SENT", "WAITING")
    assert [r["status"] for r in rbm.requests if r["kind"] == "create"] == [
        200,
        409,
    ]  # the client's retry found it accepted
    assert relay.fallbacks()["sent"] == 0 and twilio.sent == []  # no SMS while RBM holds the message
    assert relay.revoke()["revoked"] == 0  # not before its deadline
    wait_for(lambda: relay.revoke()["revoked"] == 1, timeout=30, interval=1)
    assert rbm.messages[message_id]["state"] == "revoked"
    assert (get(message_id).state, get(message_id).fallback) == (State.REVOKED, Fallback.DUE)
    assert relay.fallbacks()["sent"] == 1  # the one SMS, once RBM no longer holds the RCS message
    assert_nothing_lost_nothing_twice(rbm, twilio, [message_id])


@pytest.mark.parametrize("answer_lost", [False, True])
def test_a_pending_message_resent_by_the_sweep_and_answered_409_is_sent(relay, rbm, twilio, answer_lost):
    """send_message's create reached RBM but its answer did not come back: the
    message stayed PENDING, and the sweep's re-send meets the id RBM already has."""
    message_id = str(uuid.uuid4())
    requests.post(
        f"{rbm.url}/v1/phones/{PHONE}/agentMessages",
        params={"messageId": message_id, "agentId": AGENT},
        json={"contentMessage": CONTENT},
        timeout=5,
    )  # the first, lost, create
    seed_pending(message_id)
    if answer_lost:
        rbm.drop("create", PHONE)  # and the re-send's own answer is lost once more
    assert relay.revoke()["resent"] == 1
    stored = get(message_id)
    assert (stored.state, stored.fallback, stored.next_action_at) == (State.SENT, Fallback.WAITING, stored.revoke_at)
    assert {r["status"] for r in rbm.requests if r["kind"] == "create"} == {200, 409}
    assert relay.fallbacks()["sent"] == 0
    assert_nothing_lost_nothing_twice(rbm, twilio, [message_id])


# Slow creates


def test_creates_that_take_over_10_s_are_sent_once_and_revoked_at_the_deadline(relay, rbm, twilio):
    rbm.set_latency("create", PHONE, 10.5)
    started = time.monotonic()
    response = relay.send(revoke_after_seconds=10, fallback=FALLBACK)
    assert response.status_code == 200, response.text
    assert time.monotonic() - started >= 10
    message_id = response.json()["message_id"]
    assert response.json()["state"] == "SENT" and rbm.count("create") == 1
    wait_for(lambda: relay.revoke()["revoked"] == 1, timeout=30, interval=1)
    assert relay.fallbacks()["sent"] == 1
    assert_nothing_lost_nothing_twice(rbm, twilio, [message_id])


# 429 / 503 with Retry-After


def test_a_create_throttled_within_the_bound_waits_as_told_and_is_sent(functions, firestore, rbm):
    process = functions("send_message", env={"RBM_API_ENDPOINT": rbm.url, **ENV, "RBM_RETRY_SECONDS": "5"})
    rbm.script("create", PHONE, [429], retry_after="2")
    response = requests.post(process.url, json={"phone": PHONE, "content": CONTENT}, timeout=60)
    assert (response.status_code, response.json()["state"]) == (200, "SENT")
    first, second = (r["time"] for r in rbm.requests if r["kind"] == "create")
    assert second - first >= 2


@pytest.mark.parametrize("status", [429, 503])
def test_a_create_throttled_past_the_bound_stays_pending_and_the_sweep_waits_as_told(relay, rbm, twilio, status):
    rbm.script("create", PHONE, [status, status], retry_after="4")
    response = relay.send(revoke_after_seconds=600, fallback=FALLBACK)
    assert response.status_code == 503  # not FAILED: RBM did not act on it
    message_id = response.json()["message_id"]
    assert (get(message_id).state, get(message_id).fallback) == (State.PENDING, Fallback.WAITING)
    assert relay.revoke()["retried"] == 1  # the sweep's re-send: throttled again, 4 s asked
    asked_at = rbm.requests[-1]["time"]
    assert get(message_id).next_action_at >= store.now() + timedelta(seconds=2)
    assert relay.revoke()["scanned"] == 0  # not due before RBM's time
    wait_for(lambda: relay.revoke()["resent"] == 1, timeout=30, interval=0.5)
    creates = [r for r in rbm.requests if r["kind"] == "create"]
    assert [r["status"] for r in creates] == [status, status, 200] and creates[-1]["time"] - asked_at >= 4
    assert (get(message_id).state, get(message_id).fallback) == (State.SENT, Fallback.WAITING)
    assert relay.fallbacks()["sent"] == 0
    assert_nothing_lost_nothing_twice(rbm, twilio, [message_id])


@pytest.mark.parametrize("status", [429, 503])
def test_a_revoke_throttled_is_not_tried_again_before_retry_after(relay, rbm, twilio, status):
    response = relay.send(revoke_after_seconds=10, fallback=FALLBACK)
    message_id = response.json()["message_id"]
    rbm.script("revoke", message_id, [status], retry_after="4")
    wait_for(lambda: relay.revoke()["retried"] == 1, timeout=30, interval=1)  # at the deadline: throttled
    asked_at = rbm.requests[-1]["time"]
    assert relay.revoke()["scanned"] == 0 and rbm.count("revoke") == 1
    wait_for(lambda: relay.revoke()["revoked"] == 1, timeout=30, interval=0.5)
    revokes = [r for r in rbm.requests if r["kind"] == "revoke"]
    assert [r["status"] for r in revokes] == [status, 200] and revokes[-1]["time"] - asked_at >= 4
    assert get(message_id).revoke_uncertain is False  # a throttled DELETE was not acted on
    assert relay.fallbacks()["sent"] == 1
    assert_nothing_lost_nothing_twice(rbm, twilio, [message_id])


# A DELETE whose answer was lost


def test_a_revoke_whose_answer_was_lost_then_404_is_uncertain_not_delivered(relay, rbm, twilio):
    response = relay.send(revoke_after_seconds=10, fallback=FALLBACK | {"time_sensitive": True})
    message_id = response.json()["message_id"]
    rbm.drop("revoke", message_id)  # the DELETE revokes it; the answer never comes; the client's retry gets 404
    wait_for(lambda: relay.revoke()["failed"] == 1, timeout=30, interval=1)
    assert [r["status"] for r in rbm.requests if r["kind"] == "revoke"] == [200, 404]
    after = get(message_id)
    assert (after.state, after.fallback, after.next_action_at) == (State.REVOKE_FAILED, Fallback.DUE, None)
    assert "outcome was lost" in after.last_error
    assert '"revoke_uncertain"' in relay.revoke_expired.read_log()
    assert relay.fallbacks()["sent"] == 1  # time-sensitive: the SMS rather than nothing; RBM holds nothing
    assert_nothing_lost_nothing_twice(rbm, twilio, [message_id])
