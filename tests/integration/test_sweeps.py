"""revoke_expired and send_fallbacks as real processes over the Firestore emulator,
against the fake RBM platform and the fake Twilio."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests

from functions import conversations, store
from functions.model import Conversation, Fallback, Message, State
from functions.transitions import Fact, learn
from tests.support import AGENT, SWEEP_ENV, wait_for


def phone(i: int) -> str:
    return f"+4477009{i:05d}"


def seed(
    count=1, state=State.SENT, fallback=Fallback.WAITING, time_sensitive=False, start=0, deadline=None
) -> list[str]:
    """Messages whose deadline has just passed, or is `deadline` (a datetime) when given."""
    past = deadline or store.now() - timedelta(seconds=1)
    ids = []
    for i in range(start, start + count):
        m = Message(
            f"msg-{i:05d}",
            phone(i),
            AGENT,
            state=state,
            fallback=fallback,
            fallback_text=f"fallback {i}",
            time_sensitive=time_sensitive,
            content={"text": f"rcs {i}"},
            revoke_at=past,
            next_action_at=past if state in (State.SENT, State.PENDING, State.REVOKE_FAILED) else None,
            fallback_at=past if fallback is Fallback.DUE else None,
        )
        batch = store.client().batch()
        batch.set(store.messages().document(m.message_id), m.to_doc())
        batch.commit()
        ids.append(m.message_id)
    return ids


def sweep(process) -> dict:
    response = requests.post(process.url, json={}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def get(message_id) -> Message:
    return store.get_message(message_id)


@pytest.fixture
def revoker(functions, firestore, rbm):
    return lambda **env: functions("revoke_expired", env={"RBM_API_ENDPOINT": rbm.url, **SWEEP_ENV, **env})


@pytest.fixture
def fallbacks(functions, firestore, sms_env):
    return lambda **env: functions("send_fallbacks", env={**sms_env, **SWEEP_ENV, **env})


def at_once(*calls):
    """Runs the calls in threads released together; returns their results, or raises the first error."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [future.result() for future in [pool.submit(run, call) for call in calls]]


def queue(rbm, message_id, i):
    """Sends the message to the fake platform, so it is queued there and revocable."""
    requests.post(
        f"{rbm.url}/v1/phones/{phone(i)}/agentMessages",
        params={"messageId": message_id, "agentId": AGENT},
        json={"contentMessage": {"text": "x"}},
        timeout=5,
    )


def test_two_sweeps_at_once_revoke_once_and_text_once_over_300_messages(revoker, fallbacks, rbm, twilio):
    ids = seed(300)
    for i, message_id in enumerate(ids):
        queue(rbm, message_id, i)
    a, b = revoker(), revoker()
    first = at_once(lambda: sweep(a), lambda: sweep(b))
    assert sum(s["revoked"] for s in first) == 300
    deletes = [r["message_id"] for r in rbm.requests if r["kind"] == "revoke"]
    assert sorted(deletes) == sorted(ids)  # exactly one DELETE per message
    c, d = fallbacks(), fallbacks()
    second = at_once(lambda: sweep(c), lambda: sweep(d))
    assert sum(s["sent"] for s in second) == 300
    assert sorted(s["to"] for s in twilio.sent) == sorted(phone(i) for i in range(300))  # one SMS each
    assert {get(i).fallback for i in ids} == {Fallback.SENT}


def test_every_revoke_outcome(revoker, rbm):
    ok, delivered, flaky, broken, broken_urgent = seed(4) + seed(1, time_sensitive=True, start=4)
    for i, message_id in enumerate([ok, delivered, flaky, broken, broken_urgent]):
        queue(rbm, message_id, i)
    rbm.mark_delivered(delivered)
    rbm.script("revoke", flaky, [500])
    for message_id in (broken, broken_urgent):
        rbm.script("revoke", message_id, [500] * 100)
    process = revoker(REVOKE_MAX_ATTEMPTS="3", RBM_RETRY_SECONDS="0")  # each attempt one DELETE
    summary = sweep(process)
    assert (summary["revoked"], summary["delivered"], summary["retried"]) == (1, 1, 3)
    assert (get(ok).state, get(ok).fallback) == (State.REVOKED, Fallback.DUE)
    assert (get(delivered).state, get(delivered).fallback) == (State.DELIVERED, Fallback.CANCELLED)
    wait_for(
        lambda: sweep(process) and get(broken).next_action_at is None and get(broken_urgent).next_action_at is None,
        timeout=30,
        interval=0.3,
    )
    assert get(flaky).state is State.REVOKED
    assert (get(broken).state, get(broken).fallback, get(broken).attempts) == (State.REVOKE_FAILED, Fallback.WAITING, 3)
    assert "gave up after 3 attempts" in get(broken).last_error
    assert (get(broken_urgent).state, get(broken_urgent).fallback) == (State.REVOKE_FAILED, Fallback.DUE)
    assert rbm.count("revoke", message_id=broken) == 3  # one DELETE per attempt: retries are the sweep's


def test_a_pending_message_is_sent_again_under_the_same_id(revoker, rbm):
    [pending] = seed(1, state=State.PENDING)
    assert sweep(revoker())["resent"] == 1
    assert get(pending).state is State.SENT
    assert [r["message_id"] for r in rbm.requests if r["kind"] == "create"] == [pending]


def test_a_pending_message_of_a_user_who_unsubscribed_since_is_not_sent(revoker, rbm):
    [pending] = seed(1, state=State.PENDING)
    store.update(
        conversations.refs(AGENT, phone(0))[0], Conversation, lambda _: Conversation(AGENT, phone(0), opted_out=True)
    )
    assert sweep(revoker())["failed"] == 1
    assert (get(pending).state, get(pending).fallback, get(pending).last_error) == (
        State.FAILED,
        Fallback.DUE,
        "user opted out",
    )
    assert rbm.count("create") == 0


def test_every_fallback_outcome(fallbacks, twilio):
    sent, rejected, flaky, delivered, opted_out = seed(5, state=State.REVOKED, fallback=Fallback.DUE)
    [urgent] = seed(1, state=State.REVOKE_FAILED, fallback=Fallback.DUE, time_sensitive=True, start=5)
    store.update_message(delivered, lambda m: learn(m, Fact.DELIVERED, store.now()))
    store.update(
        conversations.refs(AGENT, phone(4))[0], Conversation, lambda _: Conversation(AGENT, phone(4), opted_out=True)
    )
    twilio.script([200, 400, 503])  # in query order: sent, rejected, flaky (503: not processed, retried)
    process = fallbacks(SWEEP_PARALLELISM="1")
    summary = sweep(process)
    assert summary == summary | {
        "scanned": 5,
        "sent": 2,
        "failed": 1,
        "retried": 1,
        "cancelled": 1,
        "unknown": 0,
        "left": 0,
    }
    wait_for(lambda: sweep(process) and get(flaky).fallback is Fallback.SENT, timeout=10, interval=0.3)
    assert get(rejected).fallback is Fallback.FAILED and "provider 400" in get(rejected).last_error
    assert get(delivered).fallback is Fallback.CANCELLED and get(opted_out).fallback is Fallback.CANCELLED
    assert get(urgent).fallback is Fallback.SENT  # time-sensitive: out although delivery was uncertain
    assert sorted(s["to"] for s in twilio.sent) == sorted([phone(0), phone(2), phone(5)])
    assert get(sent).sms_id.startswith("SM")


def test_a_crash_mid_send_never_sends_twice_and_is_found_in_twilios_list(fallbacks, twilio):
    [message_id] = seed(1, state=State.REVOKED, fallback=Fallback.DUE)
    process = fallbacks()
    twilio.hold()
    with ThreadPoolExecutor(1) as pool:
        killed = pool.submit(requests.post, process.url, timeout=60)
        assert twilio.wait_sent(1, timeout=20)
        process.kill()  # between the provider call and the state write
        twilio.release()
        assert isinstance(killed.exception(timeout=30), requests.ConnectionError)
    assert get(message_id).fallback is Fallback.SENDING
    process.start()
    # Once the lease ran out the attempt is looked up in Twilio's Messages list, and found.
    wait_for(lambda: sweep(process)["sent"] == 1, timeout=30, interval=0.3)
    assert sweep(process)["scanned"] == 0
    after = get(message_id)
    assert (after.fallback, after.sms_id) == (Fallback.SENT, twilio.sent[0]["provider_id"])
    assert len(twilio.sent) == 1 and twilio.received == 1
    assert '"fallback_unknown"' not in process.read_log()


def test_a_crash_mid_revoke_is_not_taken_for_a_delivery(revoker, rbm, twilio, fallbacks):
    [message_id] = seed(1, time_sensitive=True)
    queue(rbm, message_id, 0)
    rbm.set_phone(phone(0), "slow", delay=30)
    process = revoker()
    with ThreadPoolExecutor(1) as pool:
        killed = pool.submit(requests.post, process.url, timeout=60)
        wait_for(lambda: rbm.count("revoke", message_id=message_id) == 1)
        process.kill()  # the DELETE went through; its answer and the state write never happen
        assert isinstance(killed.exception(timeout=30), requests.ConnectionError)
    assert get(message_id).revoking
    rbm.set_phone(phone(0), "accept")
    process.start()
    # Once the lease ran out: the retry's 404 could mean "revoked by the lost attempt".
    wait_for(lambda: sweep(process)["failed"] == 1, timeout=30, interval=0.3)
    after = get(message_id)
    assert (after.state, after.fallback, after.revoke_uncertain) == (State.REVOKE_FAILED, Fallback.DUE, True)
    assert sweep(fallbacks())["sent"] == 1  # time-sensitive: the SMS goes out rather than nothing
    assert '"revoke_uncertain"' in process.read_log()


def test_the_time_budget_stops_a_sweep_and_the_next_run_finishes(revoker, rbm):
    ids = seed(24)
    for i, message_id in enumerate(ids):
        queue(rbm, message_id, i)
        rbm.set_phone(phone(i), "slow", delay=0.5)
    process = revoker(SWEEP_BUDGET_SECONDS="1", SWEEP_PARALLELISM="2")
    started = time.monotonic()
    first = sweep(process)
    assert time.monotonic() - started < 5
    assert first["left"] > 0 and first["revoked"] < 24
    total = first["revoked"]
    while total < 24:
        total += sweep(process)["revoked"]
    assert {get(i).state for i in ids} == {State.REVOKED}
