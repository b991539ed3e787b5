"""Firestore freezing under live traffic: the session's emulator is stopped
(SIGSTOP: it keeps its data and port but answers nothing) and resumed while
the subscribers receive and while a sweep holds leases. Each test counts
lost = 0 and applied-twice / duplicate SMS = 0."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from functions import conversations, events, store
from functions.model import Fallback, Message, State
from functions.work_items import WorkItem
from tests.integration.test_cli import cli
from tests.integration.test_subscribers import AGENT, PHONE, push, receipt
from tests.integration.test_sweeps import SWEEP_ENV, seed, sweep
from tests.support import push_direct, wait_for

OUTAGE_SECONDS = 12  # longer than a push's acknowledgement deadline (10 s): Pub/Sub pushes again meanwhile


def test_subscribers_lose_nothing_and_apply_nothing_twice_across_an_outage(subscriber, firestore_outage):
    tracker, inbound = subscriber("track_delivery"), subscriber("record_inbound")
    ids = [f"m-{i}" for i in range(8)]
    for message_id in ids:
        store.update_message(
            message_id, lambda _, m=message_id: Message(m, PHONE, AGENT, state=State.SENT, fallback=Fallback.WAITING)
        )
    with firestore_outage():
        for i, message_id in enumerate(ids):
            push(tracker, receipt("DELIVERED", f"d-{i}", message_id=message_id, minute=1))
            push(tracker, receipt("READ", f"r-{i}", message_id=message_id, minute=2))
            push(
                inbound,
                {
                    "senderPhoneNumber": PHONE,
                    "agentId": AGENT,
                    "messageId": f"u-{i}",
                    "sendTime": f"2026-01-01T00:{10 + i:02d}:00Z",
                    "text": f"reply {i}",
                },
            )
        time.sleep(OUTAGE_SECONDS)
    conversation = conversations.refs(AGENT, PHONE)[0]
    done = wait_for(
        lambda: (
            all((m := store.get_message(i)) and m.state is State.READ for i in ids)
            and len(list(conversation.collection("messages").stream())) == len(ids)
        ),
        timeout=90,
    )
    assert done
    for i, message_id in enumerate(ids):
        m = store.get_message(message_id)
        assert sorted(m.applied) == [f"d-{i}", f"r-{i}"], m.applied  # each event once
        assert (m.fallback, m.delivered_at.minute, m.read_at.minute) == (Fallback.CANCELLED, 1, 2)
    assert conversation.get().get("last_activity_at").minute == 10 + len(ids) - 1
    assert "event_dead_lettered" not in tracker.process.read_log() + inbound.process.read_log()


def test_a_sweep_frozen_mid_send_is_taken_over_and_never_sends_twice(functions, sms_env, twilio, firestore_outage):
    ids = seed(4, state=State.REVOKED, fallback=Fallback.DUE)
    first = functions("send_fallbacks", env={**sms_env, **SWEEP_ENV})
    twilio.hold()  # every provider call waits: the sweep holds its leases
    with ThreadPoolExecutor(1) as pool:
        frozen = pool.submit(requests.post, first.url, json={}, timeout=120)
        assert twilio.wait_sent(len(ids), timeout=30)
        with firestore_outage():
            twilio.release()  # the SMS went out; the sweep's writes hang on Firestore
            time.sleep(1)
            first.kill()  # the instance dies before Firestore answers, as Cloud Run would end it
        assert isinstance(frozen.exception(timeout=30), requests.ConnectionError)
    assert {store.get_message(i).fallback for i in ids} == {Fallback.SENDING}
    second = functions("send_fallbacks", env={**sms_env, **SWEEP_ENV})
    # Once the leases ran out, each attempt is looked up in Twilio's Messages list, and found.
    wait_for(lambda: sweep(second)["sent"] == len(ids) or None, timeout=30, interval=0.5)
    assert sweep(second)["scanned"] == 0
    assert {store.get_message(i).fallback for i in ids} == {Fallback.SENT}
    assert len(twilio.sent) == len(ids)  # one SMS each, never a second


def test_a_sweep_resumed_after_an_outage_records_what_it_did(functions, sms_env, twilio, firestore_outage):
    [message_id] = seed(1, state=State.REVOKED, fallback=Fallback.DUE)
    process = functions("send_fallbacks", env={**sms_env, **SWEEP_ENV})
    twilio.hold()
    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.update(sweep(process)))
    thread.start()
    assert twilio.wait_sent(1, timeout=30)
    with firestore_outage():
        twilio.release()
        time.sleep(3)  # longer than the lease: a second sweep could take it over now
    thread.join(60)
    assert answer and answer["sent"] == 1
    assert store.get_message(message_id).fallback is Fallback.SENT
    assert sweep(process)["scanned"] == 0 and len(twilio.sent) == 1


def test_send_message_in_an_outage_answers_503_and_calls_nothing(functions, rbm, firestore_outage):
    process = functions("send_message", env={"RBM_API_ENDPOINT": rbm.url, "RBM_AGENT_ID": AGENT})
    with firestore_outage():
        started = time.monotonic()
        response = requests.post(process.url, json={"phone": PHONE, "content": {"text": "hi"}}, timeout=60)
        took = time.monotonic() - started
    assert response.status_code == 503 and response.json() == {"error": "storage unavailable, retry"}, response.text
    assert took < 40  # bounded by store.CALL_SECONDS, not by the platform's request timeout
    assert rbm.count("create") == 0  # no RBM call without a stored record
    assert '"backend_unavailable"' in process.read_log()


def test_every_entry_point_and_command_answers_within_the_bound_while_firestore_is_frozen(
    functions, rbm, sms_env, firestore_outage
):
    """Each is started (and warmed up) first, then all are called at once under one
    freeze: HTTP entry points answer 503 in JSON, the subscribers fail (so Pub/Sub
    redelivers), the worker answers its task 500 (Cloud Tasks retries it; its
    messages stay due), the operator commands exit 2 with a message; each within store.CALL_SECONDS and a
    margin for a loaded machine. The freeze lasts until the last answer: a call the
    library's defaults bound (300 s) answers only when its caller's timeout (60 s) ends."""
    env = {"RBM_API_ENDPOINT": rbm.url, **sms_env, **SWEEP_ENV}
    http = {name: functions(name, env=env) for name in ("revoke_expired", "send_fallbacks")}
    cloud = {name: functions(name, env=env) for name in ("track_delivery", "record_inbound")}
    worker = functions("process_due_work", env=env)
    for process in http.values():
        sweep(process)
    inbound = {"senderPhoneNumber": PHONE, "agentId": AGENT, "messageId": "u-1", "text": "hi"}
    pushes = {
        "track_delivery": receipt("DELIVERED", "d-1"),
        "record_inbound": inbound,
    }
    for name, other in zip(pushes, reversed(pushes.values()), strict=True):  # warm-up: a kind it ignores
        push_direct(cloud[name].url, json.dumps(other).encode(), events.parse(other).attributes())
    item = WorkItem("revoke", ("m-1",), store.now())

    calls = {
        **{name: lambda p=p: requests.post(p.url, json={}, timeout=60) for name, p in http.items()},
        **{
            name: lambda name=name, payload=payload: push_direct(
                cloud[name].url, json.dumps(payload).encode(), events.parse(payload).attributes(), timeout=60
            )
            for name, payload in pushes.items()
        },
        "process_due_work": lambda: requests.post(worker.url, data=item.encode(), timeout=60),
        "status": lambda: cli("status", "m-1"),
        "list": lambda: cli("list", "--fallback", "UNKNOWN"),
    }

    def timed(call):
        started = time.monotonic()
        try:
            answer = call()
        except Exception as exc:  # no answer in time (a timeout of the caller's): shown with the others
            answer = exc
        return answer, time.monotonic() - started

    bound = store.CALL_SECONDS + 20  # and a Python process's start on a loaded machine (the commands)
    with ThreadPoolExecutor(len(calls)) as pool, firestore_outage():
        futures = {name: pool.submit(timed, call) for name, call in calls.items()}
        answers = {name: f.result() for name, f in futures.items()}
    took = {name: round(seconds, 1) for name, (_, seconds) in answers.items()}
    assert all(seconds < bound for seconds in took.values()), f"{took} {answers}"
    for name in http:
        response = answers[name][0]
        assert (response.status_code, response.json()) == (503, {"error": "storage unavailable, retry"}), name
    assert [answers[name][0].status_code for name in pushes] == [500] * len(pushes)  # Pub/Sub redelivers
    worked = answers["process_due_work"][0]  # Cloud Tasks retries the task; its message stays due
    assert (worked.status_code, worked.json()["outcomes"]) == (500, {"m-1": "errors"}), worked.text
    for name in ("status", "list"):
        result = answers[name][0]
        assert result.returncode == 2 and "cannot reach Google Cloud" in result.stderr, (name, result.stderr)
