"""Outcome events (DESIGN §3.11): none lost between a commit and its publish, none
invented by a redelivery, numbered without gaps; real function processes on the
emulators, against the fake RBM platform."""

import dataclasses
import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from functions import events, store
from functions.model import OUTCOMES_COLLECTION, Fallback, Message, State
from functions.outbox import republish
from local.processes import PROJECT, create_pull_subscription, create_topic, pull_all
from tests.conftest import STARTED
from tests.support import AGENT, SWEEP_ENV, valid_outcome, wait_for

PHONE = "+447700900111"


def outbox(message_id: str) -> list[dict]:
    """The outbox documents of a message, by seq."""
    docs = [s.to_dict() for s in store.client().collection(OUTCOMES_COLLECTION).stream()]
    return sorted((d for d in docs if d["message_id"] == message_id), key=lambda d: d["seq"])


def received(subscription: str, expect: int, settle: float = 2.0) -> list[tuple[dict, dict]]:
    """The events pulled: `expect` of them, then nothing more for `settle` seconds."""
    got = pull_all(PROJECT, subscription, 30, expect=expect) + pull_all(PROJECT, subscription, settle)
    return [(valid_outcome(json.loads(data)), attributes) for data, attributes in got]


def test_an_event_whose_publish_failed_after_the_commit_is_published_by_the_next_run(functions, firestore, rbm):
    """The fault is real: the outcomes topic does not exist when send_message commits."""
    topic = f"outcomes-{uuid.uuid4().hex[:8]}"
    env = {"RBM_API_ENDPOINT": rbm.url, "RBM_OUTCOMES_TOPIC": topic, **SWEEP_ENV}
    rbm.set_phone(PHONE, "not_rcs")
    sender = functions("send_message", env=env)
    body = {"phone": PHONE, "content": {"text": "hi"}, "client_ref": "order-7", "metadata": {"shop": "12"}}
    answer = requests.post(sender.url, json=body, timeout=30).json()
    message_id = answer["message_id"]
    assert answer["state"] == "UNREACHABLE"
    [left] = outbox(message_id)
    assert (left["event_id"], left["published"]) == (f"{message_id}:1", False)
    assert store.get_message(message_id).outcome_seq == 1

    create_topic(PROJECT, topic)
    create_pull_subscription(PROJECT, topic, f"{topic}-pull")
    sweep = functions("revoke_expired", env={**env, "OUTBOX_GRACE_SECONDS": "0"})
    assert requests.post(sweep.url, json={}, timeout=120).status_code == 200

    [(event, attributes)] = received(f"{topic}-pull", expect=1)
    assert event == {
        "event_id": f"{message_id}:1",
        "message_id": message_id,
        "seq": 1,
        "status": "UNREACHABLE",
        "channel": "rcs",
        "fate": "failed",
        "final": True,
        "client_ref": "order-7",
        "metadata": {"shop": "12"},
        "agent_id": AGENT,
        "phone": PHONE,
        "occurred_at": event["occurred_at"],
        "reason": "RBM 404",
        "batch_id": None,
    }
    assert attributes == {
        "event_id": f"{message_id}:1",
        "message_id": message_id,
        "status": "UNREACHABLE",
        "fate": "failed",
        "agent_id": AGENT,
        "client_ref": "order-7",
    }
    assert [d["published"] for d in outbox(message_id)] == [True]
    # The next run finds nothing left: nothing is published twice.
    assert requests.post(sweep.url, json={}, timeout=120).status_code == 200
    assert received(f"{topic}-pull", expect=0) == []


def test_a_process_killed_between_its_commit_and_its_publish_loses_no_event(functions, firestore, rbm):
    """A crash, not a failed publish: Pub/Sub is frozen (SIGSTOP) so send_message's publish
    hangs after its commit, and the process is killed there (SIGKILL, no cleanup). The
    event stays in the outbox; once Pub/Sub is back, the next revoke_expired run publishes
    it. A publish the killed process had written may still arrive: a duplicate, the same data."""
    if "pubsub" not in STARTED:
        pytest.skip("the Pub/Sub emulator was not started by this session, so it can't be paused")
    topic = f"outcomes-{uuid.uuid4().hex[:8]}"
    create_topic(PROJECT, topic)
    create_pull_subscription(PROJECT, topic, f"{topic}-pull")
    env = {"RBM_API_ENDPOINT": rbm.url, "RBM_OUTCOMES_TOPIC": topic, "PUBLISH_TIMEOUT_SECONDS": "60", **SWEEP_ENV}
    rbm.set_phone(PHONE, "not_rcs")
    sender = functions("send_message", env=env)
    message_id = str(uuid.uuid4())
    body = {"phone": PHONE, "content": {"text": "hi"}, "message_id": message_id}
    emulator = STARTED["pubsub"]
    with ThreadPoolExecutor(1) as pool:
        emulator.pause()
        try:
            answer = pool.submit(requests.post, sender.url, json=body, timeout=90)
            wait_for(lambda: outbox(message_id), timeout=30)  # committed; its publish now hangs
            sender.kill()
        finally:
            emulator.resume()
        with pytest.raises(requests.RequestException):
            answer.result()
    [left] = outbox(message_id)
    assert (left["event_id"], left["status"]) == (f"{message_id}:1", "UNREACHABLE")

    sweep = functions("revoke_expired", env={**env, "OUTBOX_GRACE_SECONDS": "0"})
    assert requests.post(sweep.url, json={}, timeout=120).status_code == 200
    got = received(f"{topic}-pull", expect=1)
    assert got and {event["event_id"] for event, _ in got} == {f"{message_id}:1"}
    assert all(event == got[0][0] for event, _ in got)  # duplicates, if any, are identical
    assert [d["published"] for d in outbox(message_id)] == [True]


def test_a_redelivered_receipt_publishes_nothing_new_and_untracked_messages_nothing(subscriber, topic, monkeypatch):
    outcomes = topic("outcomes")
    monkeypatch.setenv("RBM_OUTCOMES_TOPIC", outcomes.topic)
    send = subscriber("track_delivery", env={"RBM_OUTCOMES_TOPIC": outcomes.topic})
    ours, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    store.update_message(ours, lambda _: Message(ours, PHONE, AGENT, state=State.SENT, client_ref="c-1"))

    def receipt(event_type: str, message_id: str, event_id: str) -> None:
        payload = {
            "senderPhoneNumber": PHONE,
            "eventType": event_type,
            "eventId": event_id,
            "messageId": message_id,
            "agentId": AGENT,
            "sendTime": "2026-01-01T00:00:00Z",
        }
        send(payload, **events.parse(payload).attributes())

    for event_type, event_id in [("DELIVERED", "e1"), ("DELIVERED", "e1"), ("READ", "e2"), ("READ", "e2")]:
        receipt(event_type, ours, event_id)
    receipt("DELIVERED", theirs, "e3")
    wait_for(lambda: (m := store.get_message(ours)) and m.state is State.READ and store.get_message(theirs))

    got = received(outcomes.subscription, expect=3)
    assert sorted((e["seq"], e["status"], e["fate"], e["client_ref"]) for e, _ in got) == [
        (1, "SENT", "pending", "c-1"),
        (2, "DELIVERED", "rcs", "c-1"),
        (3, "READ", "rcs", "c-1"),
    ]
    assert len({e["event_id"] for e, _ in got}) == 3
    assert store.get_message(ours).outcome_seq == 3
    assert outbox(theirs) == []  # another system's message: recorded, no events


def test_a_mark_rides_in_the_next_commit_and_the_republisher_takes_what_stayed_unmarked(
    functions, subscriber, topic, rbm, monkeypatch
):
    """A published event is marked by its instance's next commit, not by a commit of its
    own; one whose instance never commits again is published once more by the next run
    (a duplicate, identical) and marked, and not published a third time."""
    outcomes = topic("outcomes")
    monkeypatch.setenv("RBM_OUTCOMES_TOPIC", outcomes.topic)
    env = {"RBM_API_ENDPOINT": rbm.url, "RBM_OUTCOMES_TOPIC": outcomes.topic, **SWEEP_ENV}
    send = subscriber("track_delivery", env=env)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    for message_id in (a, b):
        store.update_message(message_id, lambda _, m=message_id: Message(m, PHONE, AGENT, state=State.SENT))
    published = {i: d["published"] for i in (a, b) for d in outbox(i)}
    assert published == {a: True, b: False}  # a's mark went in b's commit; b's awaits a next one

    def delivered(message_id: str) -> None:
        payload = {
            "senderPhoneNumber": PHONE,
            "eventType": "DELIVERED",
            "eventId": f"d-{message_id}",
            "messageId": message_id,
            "agentId": AGENT,
            "sendTime": "2026-01-01T00:00:00Z",
        }
        send(payload, **events.parse(payload).attributes())
        wait_for(lambda: store.get_message(message_id).state is State.DELIVERED)

    delivered(a)
    first = received(outcomes.subscription, expect=3, settle=0)  # a:1, b:1, and a:2 once published
    delivered(b)
    assert [d["published"] for d in outbox(a)] == [True, True]  # a:2's mark rode in b's commit
    assert [d["published"] for d in outbox(b)] == [False, False]  # the function process never commits again
    first += received(outcomes.subscription, expect=1)
    assert sorted(e["event_id"] for e, _ in first) == sorted([f"{a}:1", f"{b}:1", f"{a}:2", f"{b}:2"])

    sweep = functions("revoke_expired", env={**env, "OUTBOX_GRACE_SECONDS": "0"})
    assert requests.post(sweep.url, json={}, timeout=120).status_code == 200
    again = received(outcomes.subscription, expect=2)
    assert sorted(e["event_id"] for e, _ in again) == [f"{b}:1", f"{b}:2"]
    assert all(e == next(f for f, _ in first if f["event_id"] == e["event_id"]) for e, _ in again)
    assert [d["published"] for i in (a, b) for d in outbox(i)] == [True] * 4
    assert requests.post(sweep.url, json={}, timeout=120).status_code == 200
    assert received(outcomes.subscription, expect=0) == []


def test_a_mark_whose_outbox_document_is_gone_never_fails_the_change(firestore, topic, monkeypatch):
    outcomes = topic("outcomes")
    monkeypatch.setenv("RBM_OUTCOMES_TOPIC", outcomes.topic)
    message_id = str(uuid.uuid4())
    store.update_message(message_id, lambda _: Message(message_id, PHONE, AGENT, state=State.SENT))
    store.client().collection(OUTCOMES_COLLECTION).document(f"{message_id}:1").delete()  # its mark awaits
    store.change_message(message_id, lambda m: dataclasses.replace(m, state=State.DELIVERED))
    assert store.get_message(message_id).state is State.DELIVERED
    assert [(d["seq"], d["published"]) for d in outbox(message_id)] == [(2, False)]


def test_an_sms_cancelled_because_rcs_arrived_carries_no_reason_from_an_earlier_retry(
    functions, firestore, rbm, monkeypatch
):
    """A revoke answered 503 (retried: `last_error` "RBM 503: …"), then 404 (the user got the
    message): DELIVERED and SMS_CANCELLED. The cancel's cause is the delivery, not an error, so
    its event carries no reason; the earlier retry's error is not passed off as one."""
    topic = f"outcomes-{uuid.uuid4().hex[:8]}"
    create_topic(PROJECT, topic)
    create_pull_subscription(PROJECT, topic, f"{topic}-pull")
    monkeypatch.setenv("RBM_OUTCOMES_TOPIC", topic)  # this process commits the SENT message
    message_id = str(uuid.uuid4())
    store.update_message(
        message_id,
        lambda _: Message(
            message_id,
            PHONE,
            AGENT,
            state=State.SENT,
            fallback=Fallback.WAITING,
            fallback_text="sms",
            revoke_at=store.now(),
            next_action_at=store.now(),
        ),
    )
    requests.post(
        f"{rbm.url}/v1/phones/{PHONE}/agentMessages",
        params={"messageId": message_id, "agentId": AGENT},
        json={"contentMessage": {"text": "x"}},
        timeout=5,
    )
    rbm.script("revoke", message_id, [503])
    env = {"RBM_API_ENDPOINT": rbm.url, "RBM_OUTCOMES_TOPIC": topic, **SWEEP_ENV, "RBM_RETRY_SECONDS": "0"}
    revoker = functions("revoke_expired", env=env)  # one RBM try a call: the 503 is the sweep's to retry
    assert requests.post(revoker.url, json={}, timeout=120).json()["retried"] == 1
    assert store.get_message(message_id).last_error.startswith("RBM 503")
    assert rbm.mark_delivered(message_id)  # the device got it: the next DELETE answers 404
    wait_for(lambda: store.now() > store.get_message(message_id).next_action_at)
    assert requests.post(revoker.url, json={}, timeout=120).json()["delivered"] == 1

    got = {e["status"]: e for e, _ in received(f"{topic}-pull", expect=3)}
    assert set(got) == {"SENT", "DELIVERED", "SMS_CANCELLED"}
    assert (got["SMS_CANCELLED"]["fate"], got["SMS_CANCELLED"]["reason"]) == ("rcs", None)
    stored = [(d["status"], d["reason"]) for d in outbox(message_id)]
    assert stored[1:] == [("DELIVERED", None), ("SMS_CANCELLED", None)]


def test_a_republished_duplicate_is_the_same_bytes_as_the_first_publish(firestore, topic, monkeypatch):
    """A copy of an event (its mark never rode, so the republisher publishes it again) is read
    back from Firestore, whose maps come back in an order of their own: the data is still
    byte for byte the first publish's, so a consumer may dedupe or hash on the bytes."""
    outcomes = topic("outcomes")
    monkeypatch.setenv("RBM_OUTCOMES_TOPIC", outcomes.topic)
    monkeypatch.setenv("OUTBOX_GRACE_SECONDS", "0")
    message_id = str(uuid.uuid4())
    metadata = {key: f"value of {key}" for key in ("shop", "a.b", "zone", "é", "k`", "order", "Z", "1")}
    store.update_message(
        message_id, lambda _: Message(message_id, PHONE, AGENT, state=State.SENT, metadata=metadata, client_ref="r")
    )
    [(first, _)] = pull_all(PROJECT, outcomes.subscription, 30, expect=1)
    assert republish(store.now()) == 1  # its mark awaits a commit that never comes
    [(again, _)] = pull_all(PROJECT, outcomes.subscription, 30, expect=1)
    assert json.loads(again) == json.loads(first)
    assert again == first
