"""Due work fanned out over Pub/Sub: revoke_expired / send_fallbacks dispatching work
items at their due second, process_due_work behind push subscriptions acting on them,
as real processes over the emulators, against the fake RBM platform and the fake Twilio."""

import base64
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc
import pytest
import requests

from functions import events, store
from functions.model import SWEPT_FALLBACKS, Fallback, Message, State
from functions.work_items import WorkItem
from local.fake_rbm import now_rfc3339
from local.processes import PROJECT, create_push_subscription, create_topic, publish
from local.scheduler import Scheduler
from local.simulator import Simulator
from tests.integration.test_sweeps import AGENT, SWEEP_ENV, get, phone, queue, seed, sweep
from tests.support import push_direct, room_to_run, wait_for, wait_until_steady

# Leases outlast any call here, even on a loaded machine, unless a test needs one to run out.
ENV = {**SWEEP_ENV, "LEASE_SECONDS": "30", "REVOKE_GRACE_SECONDS": "0.5"}


def items_done(process) -> int:
    return process.read_log().count('"work_item_done"')


def send_item(topic: str, duty: str, ids, due_at=None) -> None:
    """Publishes a work item to the topic, as a scheduled run does."""
    data, attributes = WorkItem(duty, tuple(ids), due_at or store.now()).encode()
    publish(PROJECT, topic, data, **attributes)


def push_item(process, topic: str, duty: str, ids) -> None:
    """POSTs a work item to one worker in Pub/Sub's push envelope, as its subscription would."""
    data, attributes = WorkItem(duty, tuple(ids), store.now()).encode()
    response = push_direct(f"{process.url}/projects/{PROJECT}/topics/{topic}", data, attributes)
    assert response.status_code == 200, response.text


@pytest.fixture
def work_topic(pubsub_emulator):
    """A fresh work topic and its dead-letter topic; answers the work topic's id."""
    name = f"work-{uuid.uuid4().hex[:10]}"
    create_topic(PROJECT, name)
    create_topic(PROJECT, f"{name}-dead")
    return name


@pytest.fixture
def worker(functions, firestore, rbm, sms_env, work_topic):
    """`worker(**env)` → a process_due_work process behind its own push subscription
    on the work topic (so two workers each get every item), warmed up by one item."""

    def start(**env):
        process = functions("process_due_work", env={"RBM_API_ENDPOINT": rbm.url, **sms_env, **ENV, **env})
        create_push_subscription(
            PROJECT,
            work_topic,
            f"push-{uuid.uuid4().hex[:8]}",
            f"{process.url}/projects/{PROJECT}/topics/{work_topic}",
            dead_letter_topic=f"{work_topic}-dead",
            max_delivery_attempts=5,
        )
        push_item(process, work_topic, "revoke", ["warm-up"])  # no such message: imports and clients are ready after it
        return process

    return start


@pytest.fixture
def scheduled(functions, firestore, rbm, sms_env, work_topic):
    """`scheduled("revoke_expired", **env)` → a scheduled entry point that publishes to the work topic."""
    return lambda target, **env: functions(
        target, env={"RBM_API_ENDPOINT": rbm.url, **sms_env, **ENV, "RBM_WORK_TOPIC": work_topic, **env}
    )


def expiring(rbm, count, deadline=None, time_sensitive=False) -> list[str]:
    """`count` messages queued at the platform, with their deadline passed (or at `deadline`)."""
    ids = seed(count, time_sensitive=time_sensitive, deadline=deadline)
    for i, message_id in enumerate(ids):
        queue(rbm, message_id, i)
    return ids


def once_each(rbm, twilio, ids):
    """Asserts one DELETE per message at the platform and one SMS per message at Twilio."""
    assert Counter(r["message_id"] for r in rbm.requests if r["kind"] == "revoke") == Counter(ids)
    assert Counter(s["to"] for s in twilio.sent) == Counter(phone(i) for i in range(len(ids)))


def test_items_twice_out_of_order_and_to_two_workers_act_once(worker, work_topic, rbm, twilio):
    ids = expiring(rbm, 40)
    a, b = worker(), worker()  # each has its own subscription: every item reaches both, at the same time
    chunks = [ids[i : i + 10] for i in range(0, 40, 10)]
    for duty in ("revoke", "fallback"):  # each SMS is due the grace (0.5 s) after its revoke: after every revoke
        now = store.now() + timedelta(seconds=0.5)
        published = [
            (chunk, now + timedelta(seconds=1 - 0.3 * n)) for n, chunk in enumerate(chunks)
        ]  # latest due first
        published += [*published[::-1], (ids[5:25], now)]  # again, in the other order, and overlapping
        for chunk, due_at in published:
            send_item(work_topic, duty, chunk, due_at)
        # Both workers finished every item (warm-up included): nothing more is on its way.
        done = 1 + len(published) * (1 if duty == "revoke" else 2)
        wait_for(lambda done=done: items_done(a) == items_done(b) == done, timeout=60, interval=0.3)
    once_each(rbm, twilio, ids)
    assert {(get(i).state, get(i).fallback) for i in ids} == {(State.REVOKED, Fallback.SENT)}


def fated(message: Message) -> bool:
    """The message reached its fate: no sweep will act on it again, and it is not
    stranded as sent-and-never-revoked (a revoke given up on is an end: it is reported)."""
    return (
        message.next_action_at is None
        and message.fallback not in SWEPT_FALLBACKS
        and message.state not in (State.PENDING, State.SENT)
    )


def lost(ids) -> list[str]:
    return [i for i in ids if not fated(get(i))]


def test_a_worker_killed_mid_item_loses_nothing_and_texts_once(worker, scheduled, work_topic, rbm, twilio):
    ids = expiring(rbm, 20, time_sensitive=True)  # time-sensitive: even an uncertain revoke ends in an SMS
    for message_id in ids:
        rbm.set_latency("revoke", message_id, 0.5)  # revoked at once, answered later
    process = worker(SWEEP_PARALLELISM="2", LEASE_SECONDS="2")
    send_item(work_topic, "revoke", ids)
    wait_for(lambda: rbm.count("revoke") >= 6)
    process.kill()  # mid-item: some revoked, two DELETEs in flight, the rest untouched
    assert len(lost(ids)) > 10
    process.start()  # Pub/Sub may push the unacknowledged item again; the runs dispatch whatever is left
    revoke, fallback = scheduled("revoke_expired", LEASE_SECONDS="2"), scheduled("send_fallbacks", LEASE_SECONDS="2")
    wait_for(lambda: sweep(revoke) and sweep(fallback) and not lost(ids), timeout=60, interval=0.5)
    assert {get(i).fallback for i in ids} == {Fallback.SENT}
    assert Counter(s["to"] for s in twilio.sent) == Counter(phone(i) for i in range(20))  # duplicate SMS = 0
    interrupted = [i for i in ids if get(i).revoke_uncertain]
    assert interrupted and {get(i).state for i in interrupted} == {State.REVOKE_FAILED}


def test_a_worker_killed_mid_sms_never_texts_twice(worker, scheduled, work_topic, twilio):
    ids = seed(12, state=State.REVOKED, fallback=Fallback.DUE)
    process = worker(SWEEP_PARALLELISM="2", LEASE_SECONDS="2")
    twilio.hold()  # Twilio sends, and keeps its answers
    send_item(work_topic, "fallback", ids)
    assert twilio.wait_sent(2, timeout=20)
    process.kill()  # between the provider call and the state write, for the SMS in flight
    twilio.release()
    process.start()
    run = scheduled("send_fallbacks", LEASE_SECONDS="2")
    wait_for(lambda: sweep(run) and not lost(ids), timeout=60, interval=0.5)
    outcomes = Counter(get(i).fallback for i in ids)
    assert outcomes == {Fallback.SENT: 12}  # the interrupted two are found in Twilio's list, never re-sent
    assert Counter(s["to"] for s in twilio.sent) == Counter(phone(i) for i in range(12))  # duplicate SMS = 0


def test_a_run_killed_mid_dispatch_leaves_the_rest_to_the_next_run(worker, scheduled, rbm, twilio):
    worker()
    run = scheduled("revoke_expired", SCHEDULE_PERIOD_SECONDS="10")
    room_to_run(10, 9)  # the run covers every deadline below
    start = store.now()  # after the processes started (slow under coverage): the deadlines are still ahead
    ids = [i for second in range(1, 7) for i in seed(5, start=5 * second, deadline=start + timedelta(seconds=second))]
    for n, message_id in enumerate(ids, start=5):
        queue(rbm, message_id, n)
    with ThreadPoolExecutor(2) as pool:
        killed = pool.submit(requests.post, run.url, timeout=60)
        wait_for(lambda: rbm.count("revoke") >= 1)  # the first item is out; later seconds are not yet
        run.kill()
        assert isinstance(killed.exception(timeout=30), requests.ConnectionError)
        wait_for(lambda: store.now() > start + timedelta(seconds=8))  # every deadline passed, no run alive
        wait_until_steady(lambda: rbm.count("revoke"))  # the worker is done with what the killed run handed out
        undispatched = [i for i in ids if get(i).state is State.SENT]
        run.start()
        later = pool.submit(sweep, run)
        texts = scheduled("send_fallbacks")
        wait_for(lambda: sweep(texts) and not lost(ids), timeout=30, interval=0.3)
        assert later.result(timeout=30)["items"] >= 1
    assert len(undispatched) >= 10  # the killed run really left work behind
    assert Counter(r["message_id"] for r in rbm.requests if r["kind"] == "revoke") == Counter(ids)
    assert Counter(s["to"] for s in twilio.sent) == Counter(phone(n) for n in range(5, 35))


def test_items_pubsub_refuses_are_dispatched_by_a_later_poll_and_the_run_goes_on(worker, scheduled, rbm, pubsub_faults):
    worker()
    pubsub_faults.fail("google.pubsub.v1.Publisher/Publish", grpc.StatusCode.PERMISSION_DENIED, "denied")  # not retried
    run = scheduled("revoke_expired", SCHEDULE_PERIOD_SECONDS="4", PUBSUB_EMULATOR_HOST=pubsub_faults.host)
    room_to_run(4, 2.5)  # polls enough for a failed one and a later one (a run ends before the next tick)
    ids = expiring(rbm, 3) + seed(3, start=3, deadline=store.now() + timedelta(seconds=2))  # due now, and later
    for n, message_id in enumerate(ids[3:], start=3):
        queue(rbm, message_id, n)
    summary = sweep(run)
    assert summary["unqueued"] >= 1 and summary["scanned"] == len(ids), summary  # each dispatched once in the end
    wait_for(lambda: rbm.count("revoke") == len(ids), timeout=30)
    assert Counter(r["message_id"] for r in rbm.requests if r["kind"] == "revoke") == Counter(ids)
    assert '"work_publish_failed"' in run.read_log()


def test_a_deadline_between_two_ticks_is_revoked_and_texted_at_its_second(worker, scheduled, rbm, twilio):
    grace = 1.0
    worker(REVOKE_GRACE_SECONDS=str(grace))
    runs = [scheduled(target, SCHEDULE_PERIOD_SECONDS="15") for target in ("revoke_expired", "send_fallbacks")]
    room_to_run(15, 13)  # both runs cover the deadline and the SMS after it
    deadline = store.now() + timedelta(seconds=8)
    [message_id] = expiring(rbm, 1, deadline=deadline)
    with ThreadPoolExecutor(2) as pool:
        ticks = [pool.submit(sweep, run) for run in runs]
        assert twilio.wait_sent(1, timeout=30)
        [revoke] = [r for r in rbm.requests if r["kind"] == "revoke"]
        [sms] = twilio.sent
        message = wait_for(lambda: (m := get(message_id)).fallback is Fallback.SENT and m)
        assert [tick.result(timeout=30)["scanned"] for tick in ticks] == [1, 1]
    due = deadline.timestamp()
    assert 0 <= revoke["time"] - due <= 2.0, revoke["time"] - due
    assert grace <= sms["time"] - due <= 2.0 + grace, sms["time"] - due
    assert 0 <= (message.revoked_at - deadline).total_seconds() <= 2.0
    assert grace <= (message.fallback_sent_at - deadline).total_seconds() <= 2.0 + grace


@pytest.fixture
def delivering(functions, firestore, pubsub_emulator):
    """The simulated platform, its webhooks through receive_webhook and Pub/Sub to
    track_delivery, as in production."""
    suffix = uuid.uuid4().hex[:8]
    topic, dead_letter, token = f"events-{suffix}", f"dead-{suffix}", "delivery-token"
    create_topic(PROJECT, topic)
    create_topic(PROJECT, dead_letter)
    tracker = functions("track_delivery", env={"RBM_DEAD_LETTER_TOPIC": dead_letter})
    create_push_subscription(
        PROJECT,
        topic,
        f"push-{suffix}",
        f"{tracker.url}/projects/{PROJECT}/topics/{topic}",
        dead_letter_topic=dead_letter,
        max_delivery_attempts=5,
    )
    webhook = functions("receive_webhook", env={"RBM_CLIENT_TOKEN": token, "RBM_EVENTS_TOPIC": topic})
    with Simulator(webhook.url, token, agent_id=AGENT) as simulator:
        queue(simulator, "warm-up", 99)  # a DELIVERED through the whole path: every process is warm after it
        simulator.mark_delivered("warm-up")
        wait_for(lambda: store.get_message("warm-up"), timeout=30)
        yield simulator


def test_a_delivered_inside_the_grace_window_cancels_the_sms(delivering, functions, sms_env, twilio):
    raced, plain = expiring(delivering, 2)
    delivering.delivery_race(phone(0))  # the revoke answers 200, and DELIVERED follows just after
    env = {"RBM_API_ENDPOINT": delivering.url, **sms_env, **SWEEP_ENV, "REVOKE_GRACE_SECONDS": "3"}
    revoker = functions("revoke_expired", env=env)
    texter = functions("send_fallbacks", env={**env, "SCHEDULE_PERIOD_SECONDS": "8"})
    room_to_run(8, 7)  # the SMS run, called next, lasts past the grace window
    revoked = sweep(revoker)
    revoked_at = time.time()
    assert revoked["revoked"] == 2
    # The SMS run keeps looking until just before its next tick: it sends each SMS at its second, after the grace.
    texted = sweep(texter)
    assert delivering.wait_delivered(eventType="DELIVERED", messageId=raced)
    assert texted["sent"] == 1
    assert (get(raced).state, get(raced).fallback) == (State.DELIVERED, Fallback.CANCELLED)
    assert (get(plain).state, get(plain).fallback) == (State.REVOKED, Fallback.SENT)
    [sms] = twilio.sent
    assert (
        sms["to"] == phone(1) and sms["time"] - revoked_at >= 3 - 1
    )  # not before the grace (less the revoke's own time)


@pytest.fixture
def texting(scheduled):
    """send_fallbacks called on a schedule (every 10 s, one run at a time, as Cloud Scheduler
    does), each run looking every second until just before the next tick, as deployed."""
    run = scheduled("send_fallbacks", SCHEDULE_PERIOD_SECONDS="10")
    scheduler = Scheduler([run.url], 10, timeout=60).start()
    yield run
    scheduler.stop()
    run.kill()


def test_a_send_answered_404_gets_its_sms_within_a_second_or_two(worker, texting, functions, rbm, work_topic, twilio):
    worker()
    sender = functions("send_message", env={"RBM_API_ENDPOINT": rbm.url, "RBM_AGENT_ID": AGENT})

    def send(i: int) -> dict:
        rbm.set_phone(phone(i), "not_rcs")
        answer = requests.post(
            sender.url,
            json={
                "phone": phone(i),
                "content": {"text": "code 123456"},
                "revoke_after_seconds": 600,
                "fallback": {"text": f"code {i} by SMS"},
            },
            timeout=30,
        )
        assert (answer.status_code, answer.json()["state"], answer.json()["fallback"]) == (200, "UNREACHABLE", "DUE")
        return answer.json()

    send(1)  # the first send warms the sender up, publisher client included
    assert twilio.wait_sent(1, timeout=20)
    answer = send(0)
    assert twilio.wait_sent(2, timeout=10)  # dispatched at its second, not at the next tick
    [create] = [r for r in rbm.requests if r["kind"] == "create" and r["phone"] == phone(0)]
    [sms] = [s for s in twilio.sent if s["to"] == phone(0)]
    assert sms["text"] == "code 0 by SMS"
    assert 0 < sms["time"] - create["time"] <= 2.0, sms["time"] - create["time"]
    wait_for(lambda: get(answer["message_id"]).fallback is Fallback.SENT)


def test_a_ttl_revoke_gets_its_sms_within_a_second_or_two(worker, texting, subscriber, rbm, work_topic, twilio):
    worker()
    send = subscriber("track_delivery")
    ids = seed(2, deadline=store.now() + timedelta(hours=1))

    def revoked_by_the_platform(i: int) -> float:
        event = {
            "phoneNumber": phone(i),
            "eventType": "TTL_EXPIRATION_REVOKED",
            "eventId": f"ttl-{i}",
            "messageId": ids[i],
            "agentId": AGENT,
            "sendTime": now_rfc3339(),
        }
        published_at = time.time()
        send(event, **events.parse(event).attributes())
        return published_at

    revoked_by_the_platform(1)  # the first event warms track_delivery up
    assert twilio.wait_sent(1, timeout=20)
    published_at = revoked_by_the_platform(0)
    assert twilio.wait_sent(2, timeout=10)  # dispatched at its second, not at the next tick
    [sms] = [s for s in twilio.sent if s["to"] == phone(0)]
    assert 0 < sms["time"] - published_at <= 2.0, sms["time"] - published_at
    wait_for(lambda: (get(ids[0]).state, get(ids[0]).fallback) == (State.REVOKED, Fallback.SENT))


def test_an_sms_made_due_in_the_past_by_a_late_event_goes_out_within_a_second_or_two(
    worker, texting, subscriber, work_topic, twilio
):
    """RBM retries a webhook for up to 7 days and Pub/Sub redelivers with backoff, so a
    TTL_EXPIRATION_REVOKED can arrive long after its sendTime, the time that makes the SMS due."""
    worker()
    send = subscriber("track_delivery")
    ids = seed(2, deadline=store.now() + timedelta(hours=1))

    def revoked_by_the_platform(i: int, sent_ago: float) -> float:
        sent = (store.now() - timedelta(seconds=sent_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event = {
            "phoneNumber": phone(i),
            "eventType": "TTL_EXPIRATION_REVOKED",
            "eventId": f"late-{i}",
            "messageId": ids[i],
            "agentId": AGENT,
            "sendTime": sent,
        }
        published_at = time.time()
        send(event, **events.parse(event).attributes())
        return published_at

    revoked_by_the_platform(1, 0)  # the first event warms track_delivery up
    assert twilio.wait_sent(1, timeout=20)
    published_at = revoked_by_the_platform(0, 120)  # sent two minutes ago, delivered to us only now
    assert twilio.wait_sent(2, timeout=10), get(ids[0])  # at once, not at the next run
    [sms] = [s for s in twilio.sent if s["to"] == phone(0)]
    assert 0 < sms["time"] - published_at <= 2.0, sms["time"] - published_at


def test_work_that_cannot_be_done_is_refused_in_json_or_acknowledged_and_logged(functions, firestore, rbm, work_topic):
    """No SMS provider, a work topic that does not exist, bytes that are not a work item:
    a scheduled run answers 503 in JSON without a provider, and counts the items it could
    not queue (the messages stay due); the worker acknowledges (a redelivery could never
    succeed) and says why in its log."""
    no_sms = functions("send_fallbacks", env={**ENV})
    answer = requests.post(no_sms.url, timeout=30)
    assert (answer.status_code, answer.json()) == (503, {"error": "no SMS_PROVIDER configured"})

    ids = seed(3)
    no_topic = functions("revoke_expired", env={"RBM_API_ENDPOINT": rbm.url, **ENV, "RBM_WORK_TOPIC": "no-such-topic"})
    answer = requests.post(no_topic.url, timeout=60)
    assert (answer.status_code, answer.json()["unqueued"], answer.json()["items"]) == (200, 1, 0), answer.text
    assert '"work_publish_failed"' in no_topic.read_log()
    assert all(get(i).state is State.SENT and get(i).next_action_at for i in ids)  # still due, for the next run
    assert rbm.count("revoke") == 0

    texts = seed(3, state=State.REVOKED, fallback=Fallback.DUE, start=3)  # SMS due: only a provider is missing
    worker = functions("process_due_work", env={"RBM_API_ENDPOINT": rbm.url, **ENV})
    push_item(worker, work_topic, "fallback", texts)
    path = f"{worker.url}/projects/{PROJECT}/topics/{work_topic}"
    for data in ("bm90IGpzb24=", "%%% not base64", base64.b64encode(b'{"duty": "sms"}').decode()):
        envelope = {"message": {"data": data, "messageId": "1", "publishTime": now_rfc3339()}, "subscription": "s"}
        assert requests.post(path, json=envelope, timeout=30).status_code == 200
    log = worker.read_log()
    assert log.count('"work_item_invalid"') == 3 and log.count('"sms_unconfigured"') == 1
    assert '"work_item_done"' not in log
    assert all(get(i).fallback is Fallback.DUE and get(i).lease_owner is None for i in texts)  # not claimed: still due
