"""Due work on Cloud Tasks: per-message timers set by the commits, process_due_work as
the tasks' HTTP target, revoke_expired / send_fallbacks as the one-pass safety net, as
real processes over the Firestore emulator and the Cloud Tasks fake, against the fake
RBM platform and the fake Twilio.

Each test proves one invariant of the engine: a task delivered twice, early, late or to
two workers at once does nothing more; a timer that could not be created, or a purged
queue, leaves the message due and the next pass enqueues it; a worker killed mid-SMS
never leads to a second SMS; a repeated enqueue cannot double a timer; RBM's 429 makes
the task answer 503, so the queue backs off; a short deadline is met through the queues.
"""

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2

from functions import dispatch, events, revoke_expired, store, tasks, timers
from functions.model import SWEPT_FALLBACKS, Fallback, Message, State
from functions.work_items import Duty, WorkItem
from local.fake_rbm import now_rfc3339
from local.fake_sms import FakeSmsWebhook
from local.processes import PROJECT, free_port
from tests.integration.test_sweeps import AGENT, SWEEP_ENV, at_once, get, phone, queue, seed, sweep
from tests.support import wait_for, wait_until_steady

# Leases outlast any call here, even on a loaded machine, unless a test needs one to run out;
# each RBM attempt is one call (the 429 test counts them).
ENV = {**SWEEP_ENV, "LEASE_SECONDS": "30", "REVOKE_GRACE_SECONDS": "0.5", "RBM_RETRY_SECONDS": "0"}
LOCATION = f"projects/{PROJECT}/locations/us-central1"
RBM_QUEUE, SMS_QUEUE = f"{LOCATION}/queues/rbm-calls", f"{LOCATION}/queues/sms-sends"
ACCOUNT = f"tasks@{PROJECT}.iam.gserviceaccount.com"
# Quick retries, so a test sees a task's retry within seconds.
RETRY = tasks_v2.RetryConfig(
    max_attempts=10, min_backoff=timedelta(seconds=0.2), max_backoff=timedelta(seconds=2), max_doublings=4
)


@pytest.fixture
def engine(cloud_tasks, functions, firestore, rbm, sms_env):
    """Both queues on the Cloud Tasks fake and a warm process_due_work (`worker`) as every
    task's target; `env` is what each function process gets (the queues, WORKER_URL, the
    tasks' service account), `start(target, **env)` starts one with it."""
    client = tasks_v2.CloudTasksClient(
        transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": cloud_tasks.url}
    )
    for name in (RBM_QUEUE, SMS_QUEUE):
        client.create_queue(parent=LOCATION, queue=tasks_v2.Queue(name=name, retry_config=RETRY))
    port = free_port()
    env = {
        "RBM_API_ENDPOINT": rbm.url,
        **sms_env,
        **ENV,
        "CLOUD_TASKS_ENDPOINT": cloud_tasks.url,
        "RBM_TASKS_QUEUE": RBM_QUEUE,
        "SMS_TASKS_QUEUE": SMS_QUEUE,
        "WORKER_URL": f"http://127.0.0.1:{port}",
        "TASKS_SERVICE_ACCOUNT": ACCOUNT,
    }

    def start(target, **overrides):
        return functions(target, env={**env, **overrides})

    def worker(**overrides):
        """A new process_due_work at WORKER_URL, with `overrides` in its environment."""
        if engine.worker is not None:
            engine.worker.stop()
        engine.worker = functions("process_due_work", env={**env, **overrides}, port=port)
        warm_up(engine.worker)
        return engine.worker

    engine = SimpleNamespace(env=env, start=start, worker=None, restart_worker=worker, tasks=cloud_tasks)
    worker()
    return engine


def warm_up(worker) -> None:
    """A task for no message: imports and clients are ready after it."""
    assert work(worker, "revoke", ["warm-up"]).status_code == 200


def work(process, duty: str, ids, due_at=None) -> requests.Response:
    """POSTs a work item to a worker, as a task of the queue would."""
    body = WorkItem(Duty(duty), tuple(ids), due_at or store.now()).encode()
    return requests.post(process.url, data=body, headers={"Content-Type": "application/json"}, timeout=60)


def expiring(rbm, count, deadline=None, time_sensitive=False, start=0) -> list[str]:
    """`count` messages queued at the platform, their deadline passed (or `deadline`), with no timer."""
    ids = seed(count, time_sensitive=time_sensitive, deadline=deadline, start=start)
    for i, message_id in enumerate(ids, start=start):
        queue(rbm, message_id, i)
    return ids


def revokes(rbm) -> Counter[str]:
    return Counter(r["message_id"] for r in rbm.requests if r["kind"] == "revoke")


def texts(sms) -> Counter[str]:
    """The SMS an SMS fake sent, counted by number."""
    return Counter(s["to"] for s in sms.sent)


def fated(message: Message) -> bool:
    """The message reached its fate: no sweep will act on it again."""
    return (
        message.next_action_at is None
        and message.fallback not in SWEPT_FALLBACKS
        and message.state not in (State.PENDING, State.SENT)
    )


def lost(ids) -> list[str]:
    return [i for i in ids if not fated(get(i))]


def overdue_beyond_the_slack(at) -> None:
    """Waits until `at` (a due time) is more than the safety net's slack in the past."""
    wait_for(lambda: store.now() > at + timedelta(seconds=dispatch.SAFETY_SLACK_SECONDS + 0.5), timeout=30)


def test_a_task_twice_early_late_or_at_two_workers_at_once_acts_once(engine, rbm, twilio):
    ids = expiring(rbm, 20)
    later = expiring(rbm, 5, deadline=store.now() + timedelta(minutes=5), start=20)
    a, b = engine.worker, engine.start("process_due_work")
    warm_up(b)
    # Early: a task for messages not due yet does nothing.
    for process in (a, b):
        answer = work(process, "revoke", later)
        assert (answer.status_code, set(answer.json()["outcomes"].values())) == (200, {"skipped"}), answer.text
    # Twice, and at two workers at once.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: work(p, "revoke", ids), (a, b, a, b)))
    assert {answer.status_code for answer in answers} == {200}
    revoked = Counter(
        i for answer in answers for i, outcome in answer.json()["outcomes"].items() if outcome == "revoked"
    )
    assert revoked == Counter(ids)  # each message revoked by one task, skipped by the others
    # Each revoke's commit set its SMS timer (to worker a); the same work reaches both workers at once too.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: work(p, "fallback", ids, store.now() + timedelta(seconds=0.5)), (a, b, a, b)))
    assert {answer.status_code for answer in answers} == {200}
    wait_for(lambda: not lost(ids), timeout=30, interval=0.3)
    # Late: the same tasks again, once everything is done.
    for duty in ("revoke", "fallback"):
        answer = work(b, duty, ids)
        assert set(answer.json()["outcomes"].values()) == {"skipped"}, answer.text
    wait_until_steady(lambda: (len(rbm.requests), len(twilio.sent)))
    assert revokes(rbm) == Counter(ids)  # one DELETE per message
    assert texts(twilio) == Counter(phone(i) for i in range(20))  # one SMS per message
    assert {(get(i).state, get(i).fallback) for i in ids} == {(State.REVOKED, Fallback.SENT)}
    assert {get(i).state for i in later} == {State.SENT} and not revokes(rbm) & Counter(later)


def test_a_timer_whose_creation_failed_after_the_commit_is_enqueued_by_the_next_pass(engine, rbm, twilio):
    ids = expiring(rbm, 3)
    texter = engine.start("send_fallbacks")
    engine.tasks.script("create_task", [403] * 3)  # the SMS timers the revokes' commits set are refused
    answer = work(engine.worker, "revoke", ids)
    assert set(answer.json()["outcomes"].values()) == {"revoked"}, answer.text
    assert engine.worker.read_log().count('"timer_not_set"') == 3
    assert engine.tasks.pending(SMS_QUEUE) == 0
    assert {get(i).fallback for i in ids} == {Fallback.DUE}  # committed, and due: only the timer is missing
    assert sweep(texter)["scanned"] == 0  # not yet overdue beyond the slack: its timer could be on its way
    overdue_beyond_the_slack(max(get(i).fallback_at for i in ids))
    assert twilio.sent == []  # nothing else would have sent them
    summary = sweep(texter)
    assert (summary["scanned"], summary["enqueued"]) == (3, 3), summary
    wait_for(lambda: not lost(ids), timeout=30, interval=0.3)
    assert texts(twilio) == Counter(phone(i) for i in range(3))
    assert sweep(texter)["scanned"] == 0


def test_a_purged_queue_leaves_the_message_due_and_the_next_pass_enqueues_it(engine, rbm, twilio):
    sender = engine.start("send_message", RBM_AGENT_ID=AGENT)
    revoker = engine.start("revoke_expired")
    answer = requests.post(
        sender.url,
        json={"phone": phone(0), "content": {"text": "hi"}, "revoke_after_seconds": 10, "fallback": {"text": "sms"}},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    message_id = answer.json()["message_id"]
    deadline = get(message_id).revoke_at
    assert engine.tasks.pending(RBM_QUEUE) == 1  # the revoke's timer
    client = tasks_v2.CloudTasksClient(
        transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": engine.tasks.url}
    )
    client.purge_queue(name=RBM_QUEUE)
    assert engine.tasks.pending(RBM_QUEUE) == 0 and store.now() < deadline, "purged after its deadline"
    overdue_beyond_the_slack(deadline)
    assert rbm.count("revoke") == 0 and get(message_id).state is State.SENT  # still due, never lost
    summary = sweep(revoker)
    assert (summary["scanned"], summary["enqueued"]) == (1, 1), summary
    wait_for(lambda: get(message_id).fallback is Fallback.SENT, timeout=30)
    [task] = {d["task"] for d in engine.tasks.dispatches(RBM_QUEUE)}
    # The timer's own name stays taken for an hour after a purge: the pass's rerun name carries it.
    assert task.startswith(timers.name(message_id, Duty.REVOKE, deadline) + "-r"), task
    assert revokes(rbm) == Counter([message_id]) and len(twilio.sent) == 1


def test_a_rerun_task_waiting_in_a_backlog_is_not_doubled_by_the_next_minutes_pass(engine, rbm, enqueuer, monkeypatch):
    """A purged queue under a backlog: the task a pass created under a rerun name still waits
    when the next minute's pass finds the message overdue again; that pass finds it there."""
    [message_id] = expiring(rbm, 1, deadline=store.now() - timedelta(seconds=60))
    due = get(message_id).next_action_at
    client = tasks_v2.CloudTasksClient(
        transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": engine.tasks.url}
    )
    client.pause_queue(name=RBM_QUEUE)  # the backlog: nothing queued runs yet
    assert timers.enqueue(message_id, Duty.REVOKE, due)  # its timer
    client.purge_queue(name=RBM_QUEUE)  # lost; the timer's name stays taken for an hour
    clock = time.time
    with monkeypatch.context() as earlier:  # the pass of the minute before
        earlier.setattr(dispatch, "time", SimpleNamespace(time=lambda: clock() - 60, monotonic=time.monotonic))
        assert dispatch.run(revoke_expired.REVOKE)["enqueued"] == 1
    assert dispatch.run(revoke_expired.REVOKE)["present"] == 1
    assert engine.tasks.pending(RBM_QUEUE) == 1
    client.resume_queue(name=RBM_QUEUE)
    wait_for(lambda: get(message_id).state is State.REVOKED and engine.tasks.pending(RBM_QUEUE) == 0, timeout=30)
    assert len(engine.tasks.dispatches(RBM_QUEUE)) == 1 and revokes(rbm) == Counter([message_id])


@pytest.fixture(params=["twilio", "gateway"])
def provider(request, twilio):
    """(SMS fake, worker env, what an interrupted send ends as): Twilio, whose Messages list
    tells whether the send went out (SENT), or the signed gateway not declared idempotent,
    which cannot tell (UNKNOWN, reported, never sent again)."""
    if request.param == "twilio":
        yield twilio, {}, Fallback.SENT
        return
    with FakeSmsWebhook(secret="gateway-secret") as gateway:
        env = {
            "SMS_PROVIDER": "webhook",
            "SMS_WEBHOOK_URL": gateway.url + "/send",
            "SMS_WEBHOOK_SECRET": "gateway-secret",
            "SMS_WEBHOOK_IDEMPOTENT": "false",
        }
        yield gateway, env, Fallback.UNKNOWN


def test_a_worker_killed_mid_sms_never_texts_twice(engine, provider):
    sms, env, interrupted = provider
    ids = seed(12, state=State.REVOKED, fallback=Fallback.DUE, deadline=store.now() - timedelta(seconds=60))
    worker = engine.restart_worker(SWEEP_PARALLELISM="2", LEASE_SECONDS="2", **env)
    texter = engine.start("send_fallbacks", LEASE_SECONDS="2")
    sms.hold()  # the provider sends, and keeps its answers
    assert sweep(texter)["enqueued"] == 12  # overdue: the safety net hands each to the queue
    assert sms.wait_sent(2, timeout=20)
    worker.kill()  # between the provider call and the state write, for the two SMS in flight
    sms.release()
    worker.start()  # the queue retries what failed; the leases run out, and the passes enqueue the rest
    wait_for(lambda: sweep(texter) and not lost(ids), timeout=90, interval=1)
    # The two in flight (SWEEP_PARALLELISM=2, their answers held) end as the provider can tell.
    assert Counter(get(i).fallback for i in ids) == Counter({Fallback.SENT: 10}) + Counter({interrupted: 2})
    assert texts(sms) == Counter(phone(i) for i in range(12))  # duplicate SMS = 0


@pytest.fixture
def enqueuer(engine, monkeypatch):
    """This test process as a writer with the engine's settings (its own Cloud Tasks client)."""
    for name, value in engine.env.items():
        monkeypatch.setenv(name, value)
    tasks._client.cache_clear()
    yield
    tasks._client.cache_clear()


def test_a_repeated_enqueue_or_two_passes_at_once_make_one_task(engine, rbm, enqueuer):
    ids = expiring(rbm, 10, deadline=store.now() - timedelta(seconds=60))
    a, b = engine.start("revoke_expired"), engine.start("revoke_expired")
    first = at_once(lambda: sweep(a), lambda: sweep(b))
    assert sum(s["enqueued"] for s in first) == 10, first
    wait_for(lambda: revokes(rbm) == Counter(ids), timeout=30)
    dispatched = Counter(d["task"] for d in engine.tasks.dispatches(RBM_QUEUE))
    assert sorted(dispatched) == sorted(timers.name(i, Duty.REVOKE, get(i).revoke_at) for i in ids)
    assert set(dispatched.values()) == {1}  # one task per message, each delivered once
    wait_for(lambda: engine.tasks.pending(RBM_QUEUE) == 0, timeout=30)  # every task answered
    # The hook of one commit, run again (a retried enqueue): the same name, ALREADY_EXISTS.
    [m] = seed(1, start=10, deadline=store.now() + timedelta(minutes=5))
    after = get(m)
    before = Message(after.message_id, after.phone, after.agent_id, state=State.PENDING)
    for _ in range(3):
        timers.schedule(before, after)
    assert engine.tasks.pending(RBM_QUEUE) == 1


def test_rbm_429_answers_the_task_503_and_the_queue_backs_off(engine, rbm):
    # A worker that would retry in the call (RBM_RETRY_SECONDS) still makes one try per task: a
    # retry is a new task at the queue's rate, never an extra call above it (rbm.client(paced)).
    engine.restart_worker(RBM_RETRY_SECONDS="5")
    [message_id] = expiring(rbm, 1, deadline=store.now() - timedelta(seconds=60))
    rbm.script("revoke", message_id, [429])
    assert sweep(engine.start("revoke_expired"))["enqueued"] == 1
    wait_for(lambda: get(message_id).state is State.REVOKED, timeout=30)
    first = timers.name(message_id, Duty.REVOKE, get(message_id).revoke_at)  # the safety net's task

    def answered(task: str) -> list[dict]:
        return [d for d in engine.tasks.dispatches(RBM_QUEUE) if d["task"] == task and d["status"] is not None]

    first_attempts = wait_for(lambda: len(got := answered(first)) >= 2 and got, timeout=30)
    assert [d["status"] for d in first_attempts[:2]] == [503, 200]  # the retry finds nothing due
    # Retry-After (the first backoff, rounded up to 1 s) is honoured before the queue tries again.
    assert first_attempts[1]["time"] - first_attempts[0]["time"] >= 1.0
    assert [r["status"] for r in rbm.requests if r["kind"] == "revoke"] == [429, 200]  # the retry timer's task


def test_a_ten_second_deadline_is_revoked_and_texted_through_the_queues(engine, rbm, twilio):
    """The one-time-code case, with no scheduled function running: the timers alone."""
    grace = float(ENV["REVOKE_GRACE_SECONDS"])
    sender = engine.start("send_message", RBM_AGENT_ID=AGENT)
    answer = requests.post(
        sender.url,
        json={
            "phone": phone(0),
            "content": {"text": "code 123456"},
            "revoke_after_seconds": 10,
            "fallback": {"text": "code 123456 by SMS", "time_sensitive": True},
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    message_id = answer.json()["message_id"]
    deadline = get(message_id).revoke_at.timestamp()
    assert twilio.wait_sent(1, timeout=40)
    [revoke] = [r for r in rbm.requests if r["kind"] == "revoke"]
    [sms] = twilio.sent
    # Functional bounds, generous for a loaded machine: at the deadline, not at a scheduled pass.
    assert 0 <= revoke["time"] - deadline <= 3.0, revoke["time"] - deadline
    assert grace <= sms["time"] - deadline <= grace + 3.0, sms["time"] - deadline
    wait_for(lambda: (get(message_id).state, get(message_id).fallback) == (State.REVOKED, Fallback.SENT))


def test_a_send_answered_404_and_a_ttl_revoke_get_their_sms_at_once(engine, subscriber, rbm, twilio):
    sender = engine.start("send_message", RBM_AGENT_ID=AGENT)
    send = subscriber("track_delivery", env=engine.env)
    rbm.set_phone(phone(0), "not_rcs")
    answer = requests.post(
        sender.url,
        json={"phone": phone(0), "content": {"text": "hi"}, "revoke_after_seconds": 600, "fallback": {"text": "sms 0"}},
        timeout=30,
    )
    assert (answer.status_code, answer.json()["state"], answer.json()["fallback"]) == (200, "UNREACHABLE", "DUE")
    assert twilio.wait_sent(1, timeout=20)  # its timer, not a scheduled pass (none runs here)
    [ttl] = seed(1, start=1, deadline=store.now() + timedelta(hours=1))
    event = {
        "phoneNumber": phone(1),
        "eventType": "TTL_EXPIRATION_REVOKED",
        "eventId": "ttl-1",
        "messageId": ttl,
        "agentId": AGENT,
        "sendTime": now_rfc3339(),
    }
    send(event, **events.parse(event).attributes())
    assert twilio.wait_sent(2, timeout=20)
    assert texts(twilio) == Counter([phone(0), phone(1)])
    wait_for(lambda: (get(ttl).state, get(ttl).fallback) == (State.REVOKED, Fallback.SENT))


def test_work_that_cannot_be_done_is_refused_in_json_and_logged(engine, rbm):
    """A body that is not a work item (not JSON, not one, nested too deep): 400; fallback work
    without an SMS provider: 503 with Retry-After (the queue retries; the messages stay due,
    unclaimed); GET: 405."""
    texts_due = seed(3, state=State.REVOKED, fallback=Fallback.DUE)
    worker = engine.start("process_due_work", SMS_PROVIDER="")
    answer = work(worker, "fallback", texts_due)
    assert (answer.status_code, answer.json()) == (503, {"error": "no SMS_PROVIDER configured"})
    assert int(answer.headers["Retry-After"]) >= 1
    assert all(get(i).fallback is Fallback.DUE and get(i).lease_owner is None for i in texts_due)
    not_items = (
        b"not json",
        b'{"duty": "sms", "message_ids": ["m"], "due_at": "2026-01-01T00:00:00+00:00"}',
        b"",
        b"[" * 100_000 + b"]" * 100_000,  # nested deeper than the JSON parser reads
    )
    for body in not_items:
        answer = requests.post(worker.url, data=body, timeout=30)
        assert answer.status_code == 400 and "not a work item" in answer.json()["error"], answer.text
    assert requests.get(worker.url, timeout=30).status_code == 405
    log = worker.read_log()
    assert log.count('"work_item_invalid"') == len(not_items) and log.count('"sms_unconfigured"') == 1
    assert '"work_item_done"' not in log
    no_sms = engine.start("send_fallbacks", SMS_PROVIDER="", SMS_TASKS_QUEUE="")  # would text itself: refuses
    answer = requests.post(no_sms.url, timeout=30)
    assert (answer.status_code, answer.json()) == (503, {"error": "no SMS_PROVIDER configured"})


def test_without_queues_a_pass_acts_itself_in_one_pass(functions, firestore, rbm, sms_env, twilio):
    """The simplest deployment: no queue, no timers; each scheduled pass does what is due."""
    expiring(rbm, 5)
    env = {"RBM_API_ENDPOINT": rbm.url, **sms_env, **ENV, "REVOKE_GRACE_SECONDS": "0"}
    revoker, texter = functions("revoke_expired", env=env), functions("send_fallbacks", env=env)
    started = time.monotonic()
    assert sweep(revoker)["revoked"] == 5
    assert sweep(texter)["sent"] == 5
    assert time.monotonic() - started < 30  # no polling until a next tick
    assert texts(twilio) == Counter(phone(i) for i in range(5))
