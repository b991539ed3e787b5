"""send_batch as a real process over the Firestore emulator, against the fake RBM platform;
its creates made by revoke_expired's pass (no RBM queue here), its SMS by send_fallbacks'."""

import contextlib
import io
import json
from collections import Counter
from datetime import timedelta

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2
from google.cloud.firestore_v1.base_query import FieldFilter

from functions import __main__ as cli
from functions import batch_request, batches, conversations, outbox, store, tasks
from functions.model import Batch, Conversation, Fallback, Message, State
from functions.rbm import client as rbm_client
from functions.transitions import claim_revoke
from local.fake_tasks import max_in_window
from local.processes import free_port
from tests.support import AGENT, SWEEP_ENV, valid_outcome, wait_for

CONTENT = {"text": "Your appointment is tomorrow at 10:00"}
FALLBACK = {"text": "Appointment tomorrow 10:00"}
LOCATION = "projects/test-project/locations/us-central1"
RBM_QUEUE, SMS_QUEUE = f"{LOCATION}/queues/rbm-calls", f"{LOCATION}/queues/sms-sends"
RATE = 20  # the RBM queue's max_dispatches_per_second: the agent's quota in these tests


def phone(i: int) -> str:
    return f"+4477009{i:05d}"


# The processes of these tests set no timer, and the scheduled passes act themselves, whatever
# queue this test process is given (`here`; a process inherits its environment).
NO_QUEUES = {"RBM_TASKS_QUEUE": "", "SMS_TASKS_QUEUE": ""}


@pytest.fixture
def send_batch(functions, firestore, rbm):
    process = functions("send_batch", env={"RBM_API_ENDPOINT": rbm.url, **SWEEP_ENV, **NO_QUEUES})
    return lambda body: requests.post(process.url, json=body, timeout=120)


@pytest.fixture
def passes(functions, rbm, sms_env):
    """`passes()` runs one revoke_expired pass (the creates), then one send_fallbacks pass (the SMS)."""
    revoker = functions("revoke_expired", env={"RBM_API_ENDPOINT": rbm.url, **SWEEP_ENV, **NO_QUEUES})
    texter = functions("send_fallbacks", env={**sms_env, **SWEEP_ENV, **NO_QUEUES})

    def run() -> None:
        for process in (revoker, texter):
            assert requests.post(process.url, json={}, timeout=120).status_code == 200

    return run


@pytest.fixture
def queues(cloud_tasks, firestore):
    """Both queues on the Cloud Tasks fake (RBM_QUEUE at RATE a second); `queues(worker_url)`
    is the environment of a function that sets timers on them, for a worker at `worker_url`."""
    client = tasks_v2.CloudTasksClient(
        transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": cloud_tasks.url}
    )
    limits = tasks_v2.RateLimits(max_dispatches_per_second=RATE, max_concurrent_dispatches=20)
    client.create_queue(parent=LOCATION, queue=tasks_v2.Queue(name=RBM_QUEUE, rate_limits=limits))
    client.create_queue(parent=LOCATION, queue=tasks_v2.Queue(name=SMS_QUEUE))
    return lambda worker_url: {
        "RBM_TASKS_QUEUE": RBM_QUEUE,
        "SMS_TASKS_QUEUE": SMS_QUEUE,
        "CLOUD_TASKS_ENDPOINT": cloud_tasks.url,
        "WORKER_URL": worker_url,
        "TASKS_SERVICE_ACCOUNT": "tasks@test-project.iam.gserviceaccount.com",
    }


@pytest.fixture
def here(queues, rbm, task_target, monkeypatch):
    """This test process as a send_batch instance: RBM at the fake, timers on the fake's queues
    (their tasks go to `task_target`), so a call of batches.take can be cut short where a test says."""
    for name, value in {"RBM_API_ENDPOINT": rbm.url, **SWEEP_ENV, **queues(task_target.url)}.items():
        monkeypatch.setenv(name, value)
    tasks._client.cache_clear()
    rbm_client.cache_clear()
    yield
    tasks._client.cache_clear()
    rbm_client.cache_clear()


def no_task_set(cloud_tasks, task_target) -> bool:
    """No timer was set on either queue: none waits there, none was dispatched."""
    queued = cloud_tasks.pending(RBM_QUEUE) + cloud_tasks.pending(SMS_QUEUE)
    return queued == 0 and not cloud_tasks.dispatches(RBM_QUEUE) + cloud_tasks.dispatches(SMS_QUEUE) + task_target.got


def answer_lost(update):
    """store.update, except that the write recording a batch's answer (`stored`) fails: the
    instance stopped after storing every message, before its answer."""

    def cut_short(ref, kind, change):
        def answering(current):
            new = change(current)
            if kind is Batch and new.stored and not (current and current.stored):
                raise RuntimeError("instance stopped")
            return new

        return update(ref, kind, answering)

    return cut_short


def stops_on(call: int, real):
    """`real`, except that its `call`-th call raises: the instance stopped there."""
    calls = []

    def stopping(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise RuntimeError("instance stopped")
        return real(*args, **kwargs)

    return stopping


def take_until_stopped(monkeypatch, body, owner, name, replacement) -> None:
    """batches.take of `body` in this process, `owner.name` replaced by `replacement` and
    pages committed one at a time, cut short where the replacement stops the instance."""
    with monkeypatch.context() as cut:
        cut.setattr(owner, name, replacement)
        cut.setattr(store, "CREATE_PARALLELISM", 1)
        with pytest.raises(RuntimeError, match="instance stopped"):
            batches.take(batch_request.parse(body, AGENT))


def accepted_creates(fake) -> Counter[str]:
    """The creates the fake RBM accepted, by message id."""
    return Counter(r["message_id"] for r in fake.requests if r["kind"] == "create" and r["status"] == 200)


def of_batch(batch_id: str) -> list[Message]:
    found = store.query(store.messages().where(filter=FieldFilter("batch_id", "==", batch_id)))
    return sorted((Message.from_doc(store.found(s)) for s in found), key=lambda m: m.phone)


def opt_out(number: str) -> None:
    store.update(
        conversations.refs(AGENT, number)[0], Conversation, lambda _: Conversation(AGENT, number, opted_out=True)
    )


def batch_of(count: int, batch_id: str, **defaults) -> dict:
    messages = [{"phone": phone(i)} for i in range(count)]
    return {"batch_id": batch_id, "defaults": {"content": CONTENT, **defaults}, "messages": messages}


def test_a_mixed_batch_is_stored_then_sent_by_the_queue_one_sms_at_most_none_for_the_opted_out(
    send_batch, passes, rbm, twilio
):
    opt_out(phone(3))
    rbm.set_phone(phone(4), "not_rcs")
    body = {
        "batch_id": "spring-1",
        "defaults": {"content": CONTENT, "fallback": FALLBACK, "revoke_after_seconds": 600},
        "messages": [
            {"phone": phone(0), "client_ref": "a"},
            {"phone": phone(1), "revoke_after_seconds": 3600},
            {"phone": "12345"},  # invalid
            {"phone": phone(0)},  # a duplicate of index 0
            {"phone": phone(3)},  # opted out
            {"phone": phone(4)},  # no RCS: its create answers 404
        ],
    }
    response = send_batch(body)
    assert response.status_code == 202, response.text
    assert response.json() == {
        "batch_id": "spring-1",
        "accepted": 3,
        "rejected": [
            {"index": 2, "error": "phone must be an E.164 number like +14155550123"},
            {"index": 3, "error": "phone already in this batch for this agent, at index 0"},
            {"index": 4, "error": "the user unsubscribed from this agent"},
        ],
    }
    assert rbm.count("create") == 0  # nothing sent before the answer
    stored = of_batch("spring-1")
    assert [m.phone for m in stored] == [phone(0), phone(1), phone(4)]
    assert {(m.state, m.revoke_at) for m in stored} == {(State.PENDING, None)}  # the deadline waits for the create
    assert [m.revoke_after_seconds for m in stored] == [600, 3600, 600]
    assert stored[0].message_id == batch_request.message_id("spring-1", 0)

    passes()
    sent, later, unreachable = of_batch("spring-1")
    assert (sent.state, later.state, unreachable.state) == (State.SENT, State.SENT, State.UNREACHABLE)
    assert sent.revoke_at == sent.sent_at + timedelta(seconds=600)  # counted from its own accepted create
    assert later.revoke_at == later.sent_at + timedelta(seconds=3600)
    assert unreachable.fallback is Fallback.SENT
    assert [s["to"] for s in twilio.sent] == [phone(4)]  # one SMS, to the one without RCS; none for the opted out
    assert rbm.count("create", phone=phone(3)) == 0
    events = [valid_outcome(e.data()) for m in of_batch("spring-1") for e in outbox.history(m)]
    assert events and {e["batch_id"] for e in events} == {"spring-1"}


def test_the_same_batch_twice_answers_the_same_and_stores_nothing_twice_another_request_conflicts(send_batch, rbm):
    body = batch_of(30, "twice", fallback=FALLBACK) | {"messages": [*batch_of(30, "twice")["messages"], {}]}
    first = send_batch(body)
    written = {m.message_id: m.updated_at for m in of_batch("twice")}
    second = send_batch(body)
    assert first.status_code == second.status_code == 202 and first.json() == second.json()
    assert first.json()["accepted"] == 30 and [r["index"] for r in first.json()["rejected"]] == [30]
    assert {m.message_id: m.updated_at for m in of_batch("twice")} == written and len(written) == 30
    changed = send_batch(body | {"defaults": {"content": {"text": "other"}}})
    assert changed.status_code == 409 and "different request" in changed.json()["error"]
    assert rbm.count("create") == 0
    # The batch document outlives its messages (no TTL; they keep theirs): its id, which derives
    # theirs, is never free for a new batch while they are kept.
    stored = batches.collection().document("twice").get().to_dict()
    assert stored["expire_at"] is None and all(m.expire_at for m in of_batch("twice"))


def test_a_retry_that_spells_a_field_in_each_message_instead_of_in_defaults_is_the_same_request(send_batch):
    body = batch_of(3, "spelled", fallback=FALLBACK) | {"messages": [{"phone": phone(0)}, {}, {"phone": phone(2)}]}
    first = send_batch(body)
    explicit = [{"content": CONTENT, "fallback": FALLBACK} | m for m in body["messages"]]
    again = send_batch({"batch_id": "spelled", "defaults": {"fallback": FALLBACK}, "messages": explicit})
    assert first.status_code == again.status_code == 202 and again.content == first.content
    other = [m | {"fallback": {"text": "another SMS"}} for m in explicit]
    assert send_batch({"batch_id": "spelled", "messages": other}).status_code == 409


def test_a_batch_whose_storing_died_half_way_is_completed_by_its_retry_without_rewriting(send_batch, monkeypatch, rbm):
    body = batch_of(700, "interrupted")  # four commits of 200
    take_until_stopped(monkeypatch, body, store, "_create_page", stops_on(3, store._create_page))
    before = {m.message_id: m.created_at for m in of_batch("interrupted")}
    assert len(before) == 500 and not batches.get("interrupted").stored  # pages 1, 2 and 4 (of 100) committed

    response = send_batch(body)
    assert response.status_code == 202 and response.json()["accepted"] == 700
    after = of_batch("interrupted")
    assert len(after) == 700 and len({m.message_id for m in after}) == 700
    assert all(m.created_at == before[m.message_id] for m in after if m.message_id in before)  # not rewritten
    assert all(m.next_action_at for m in after)  # all released once answered
    assert send_batch(body).json() == response.json()


def test_nothing_is_sent_before_the_answer_is_recorded_and_a_retry_sends_each_message_once(
    here, send_batch, passes, rbm, twilio, cloud_tasks, task_target, monkeypatch
):
    rbm.set_phone(phone(1), "not_rcs")
    body = batch_of(30, "unanswered", fallback=FALLBACK) | {"precheck": True}
    take_until_stopped(monkeypatch, body, store, "update", answer_lost(store.update))
    stored = of_batch("unanswered")
    assert len(stored) == 30 and not batches.get("unanswered").stored
    assert [m.state for m in stored[:2]] == [State.PENDING, State.UNREACHABLE]

    passes()  # a scheduled revoke_expired pass, and a send_fallbacks pass, while the sender has no answer
    assert rbm.count("create") == 0 and twilio.sent == []
    assert no_task_set(cloud_tasks, task_target)

    rbm.set_phone(phone(1), "accept")  # the retry's pre-check says otherwise: the answer counts what is stored
    response = send_batch(body)
    assert response.status_code == 202 and (response.json()["accepted"], response.json()["unreachable"]) == (30, 1)
    passes()
    assert accepted_creates(rbm) == Counter(m.message_id for m in stored if m.state is State.PENDING)  # once each
    assert [s["to"] for s in twilio.sent] == [phone(1)]
    assert {m.state for m in of_batch("unanswered")} == {State.SENT, State.UNREACHABLE}


def test_cancel_after_the_release_withdraws_the_sms_not_yet_sent_of_a_number_without_rcs(
    send_batch, passes, rbm, twilio
):
    rbm.set_phone(phone(1), "not_rcs")
    assert send_batch(batch_of(3, "late-cancel", fallback=FALLBACK) | {"precheck": True}).status_code == 202
    assert batches.cancel("late-cancel", wait_seconds=0) == {"cancelled": 3, "in_flight": 0}
    passes()
    assert rbm.count("create") == 0 and twilio.sent == []
    unreachable = next(m for m in of_batch("late-cancel") if m.phone == phone(1))
    assert (unreachable.fallback, unreachable.last_error) == (Fallback.CANCELLED, "batch cancelled")
    assert [e.status for e in outbox.history(unreachable)] == ["UNREACHABLE", "SMS_CANCELLED"]


def test_a_batch_cancelled_before_its_retry_stores_the_rest_withdrawn_and_sends_nothing(
    here, send_batch, passes, rbm, twilio, cloud_tasks, task_target, monkeypatch
):
    for i in (1, 240):  # one stored by the call cut short, one by its retry
        rbm.set_phone(phone(i), "not_rcs")
    body = batch_of(250, "called-off", fallback=FALLBACK) | {"precheck": True}  # two commits of 200
    take_until_stopped(monkeypatch, body, store, "_create_page", stops_on(2, store._create_page))
    assert len(of_batch("called-off")) == 200
    assert batches.cancel("called-off", wait_seconds=0) == {"cancelled": 200, "in_flight": 0}

    response = send_batch(body)
    assert response.status_code == 202 and (response.json()["accepted"], response.json()["unreachable"]) == (250, 2)
    passes()
    assert rbm.count("create") == 0 and twilio.sent == [] and no_task_set(cloud_tasks, task_target)
    messages = of_batch("called-off")
    unreachable = [m for m in messages if m.state is State.UNREACHABLE]
    assert len(messages) == 250 and [m.phone for m in unreachable] == [phone(1), phone(240)]
    assert {(m.state, m.fallback, m.last_error) for m in messages if m not in unreachable} == {
        (State.FAILED, Fallback.CANCELLED, "batch cancelled")
    }
    assert {(m.fallback, m.last_error) for m in unreachable} == {(Fallback.CANCELLED, "batch cancelled")}
    stored_later = next(m for m in messages if m.phone == phone(230))
    events = [valid_outcome(e.data()) for e in outbox.history(stored_later)]
    assert [(e["status"], e["reason"], e["batch_id"]) for e in events] == [
        ("FAILED", "batch cancelled", "called-off"),
        ("SMS_CANCELLED", "batch cancelled", "called-off"),
    ]
    assert [e.status for e in outbox.history(unreachable[1])] == ["UNREACHABLE", "SMS_CANCELLED"]
    assert send_batch(body).json() == response.json()


def test_a_cancel_while_a_batch_is_being_stored_stops_the_messages_stored_after_it(
    firestore, passes, rbm, twilio, monkeypatch
):
    body = batch_of(250, "cancelled-midway", fallback=FALLBACK)  # two commits of 200
    real, cancels = store._create_page, []

    def cancelled_after_the_first(page):
        stored = real(page)
        if not cancels:  # the operator cancels while the call stores the rest
            cancels.append(batches.cancel("cancelled-midway", wait_seconds=0))
        return stored

    monkeypatch.setattr(store, "_create_page", cancelled_after_the_first)
    monkeypatch.setattr(store, "CREATE_PARALLELISM", 1)
    batch = batches.take(batch_request.parse(body, AGENT))
    assert cancels == [{"cancelled": 200, "in_flight": 0}]
    assert batch.accepted == 250 and batch.cancelled_at and batch.released_at  # answered, the cancel kept
    passes()
    assert rbm.count("create") == 0 and twilio.sent == []
    assert {(m.state, m.fallback, m.last_error) for m in of_batch("cancelled-midway")} == {
        (State.FAILED, Fallback.CANCELLED, "batch cancelled")
    }


def test_a_retry_after_the_call_died_releasing_finishes_the_release_and_its_timers(
    here, functions, queues, rbm, cloud_tasks, task_target, monkeypatch
):
    body = batch_of(250, "half-released", revoke_after_seconds=600)  # two release commits: 200, then 50
    take_until_stopped(monkeypatch, body, batches, "_release_page", stops_on(2, batches._release_page))
    due = [m for m in of_batch("half-released") if m.next_action_at]
    assert len(due) == 200 and batches.get("half-released").stored  # answered, released in part,
    assert no_task_set(cloud_tasks, task_target)  # and no timer set

    port = free_port()
    env = {"RBM_API_ENDPOINT": rbm.url, **SWEEP_ENV, **queues(f"http://127.0.0.1:{port}")}
    functions("process_due_work", env=env | {"LEASE_SECONDS": "30", "RETRY_BACKOFF_SECONDS": "1"}, port=port)
    response = requests.post(functions("send_batch", env=env).url, json=body, timeout=120)
    assert response.status_code == 202 and response.json()["accepted"] == 250
    assert batches.get("half-released").released_at is not None
    # The queue's tasks alone create them (no scheduled pass runs here): the retry set every timer.
    wait_for(lambda: {m.state for m in of_batch("half-released")} == {State.SENT}, timeout=120, interval=0.5)
    assert accepted_creates(rbm) == Counter(m.message_id for m in of_batch("half-released"))  # once each


def test_cancel_withdraws_what_is_not_created_and_lets_a_create_once_attempted_finish(send_batch, passes, rbm, twilio):
    assert send_batch(batch_of(20, "cancel-me", fallback=FALLBACK)).status_code == 202
    claimed, lapsed = batch_request.message_id("cancel-me", 0), batch_request.message_id("cancel-me", 1)
    now = store.now()
    store.claim_message(claimed, lambda m: claim_revoke(m, now, timedelta(seconds=60), "a worker"))
    # Its lease ran out while its call may still be in flight: RBM may hold the message.
    store.claim_message(lapsed, lambda m: claim_revoke(m, now, timedelta(0), "a worker"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["batch", "cancel-me"]) == 0
    assert '"PENDING": 20' in out.getvalue()

    assert batches.cancel("cancel-me", wait_seconds=0) == {"cancelled": 18, "in_flight": 2}
    messages = {m.message_id: m for m in of_batch("cancel-me")}
    assert messages[claimed].state is messages[lapsed].state is State.PENDING  # their calls finish on their own
    cancelled = [m for i, m in messages.items() if i not in (claimed, lapsed)]
    assert {(m.state, m.fallback, m.last_error) for m in cancelled} == {
        (State.FAILED, Fallback.CANCELLED, "batch cancelled")
    }
    [event_one, event_two] = [valid_outcome(e.data()) for e in outbox.history(cancelled[0])]
    assert (event_one["status"], event_two["status"], event_two["fate"]) == ("FAILED", "SMS_CANCELLED", "failed")
    assert event_one["reason"] == "batch cancelled" and event_two["batch_id"] == "cancel-me"
    assert batches.get("cancel-me").cancelled_at is not None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["batch", "cancel-me"]) == 0
    shown = json.loads(out.getvalue())
    assert shown["cancelled_at"] and (shown["precheck"], shown["unreachable"]) == (False, 0)

    passes()  # the lapsed claim is due again: its create is made (under its own id), the withdrawn are not
    assert accepted_creates(rbm) == Counter([lapsed]) and twilio.sent == []  # withdrawn: neither channel
    assert store.get_message(lapsed).state is State.SENT


def test_a_batch_under_a_429_storm_creates_each_message_once(send_batch, passes, rbm, twilio):
    rbm.fail_share("create", 0.6, seed=7, status=429)
    assert send_batch(batch_of(60, "storm", fallback=FALLBACK)).status_code == 202
    for _ in range(40):
        passes()
        if all(m.state is State.SENT for m in of_batch("storm")):
            break
    assert {m.state for m in of_batch("storm")} == {State.SENT}
    accepted = [r for r in rbm.requests if r["kind"] == "create" and r["status"] == 200]
    assert len(accepted) == 60 and len({r["message_id"] for r in accepted}) == 60  # 0 duplicates
    assert any(r["status"] == 429 for r in rbm.requests) and twilio.sent == []


def test_the_precheck_skips_the_create_of_numbers_rbm_reports_unreachable(send_batch, passes, rbm, twilio):
    for i in (1, 2):
        rbm.set_phone(phone(i), "not_rcs")
    response = send_batch(batch_of(5, "checked", fallback=FALLBACK) | {"precheck": True})
    assert response.status_code == 202 and response.json()["unreachable"] == 2
    assert rbm.count("batch_get") == 1 and rbm.count("create") == 0
    stored = of_batch("checked")
    assert [m.state for m in stored] == [State.PENDING, State.UNREACHABLE, State.UNREACHABLE, *[State.PENDING] * 2]
    passes()
    assert rbm.count("create") == 3 and rbm.count("create", phone=phone(1)) == 0
    assert sorted(s["to"] for s in twilio.sent) == [phone(1), phone(2)]


def test_a_precheck_that_finds_no_number_reachable_skips_every_create(send_batch, rbm):
    for i in range(3):  # RBM's answer then has no reachableUsers at all (proto3 JSON leaves an empty list out)
        rbm.set_phone(phone(i), "not_rcs")
    response = send_batch(batch_of(3, "none-reachable", fallback=FALLBACK) | {"precheck": True})
    assert response.status_code == 202 and response.json()["unreachable"] == 3
    assert {m.state for m in of_batch("none-reachable")} == {State.UNREACHABLE}


def test_a_precheck_that_fails_leaves_every_number_to_its_create(send_batch, rbm):
    rbm.script("batch_get", "agent", [503, 503, 503, 503, 503, 503, 503, 503])
    response = send_batch(batch_of(3, "unchecked") | {"precheck": True})
    assert response.status_code == 202 and response.json()["unreachable"] == 0
    assert {m.state for m in of_batch("unchecked")} == {State.PENDING}


def test_a_batch_that_is_not_one_is_refused(send_batch):
    too_many = {"messages": [{"phone": phone(0)}] * (batch_request.MAX_MESSAGES + 1)}
    assert send_batch(too_many).status_code == 413
    assert send_batch({"messages": []}).status_code == 400
    assert send_batch({"messages": [{}], "defaults": {"phone": phone(0)}}).status_code == 400


def test_a_chunked_body_over_the_limit_is_refused_without_reading_it_all(functions, rbm):
    process = functions("send_batch", env={"RBM_API_ENDPOINT": rbm.url, **SWEEP_ENV, **NO_QUEUES})

    def chunks():  # no Content-Length to check first: a chunked upload 16 bytes over 32 MiB
        yield from [b" " * (1 << 20)] * (batch_request.MAX_BODY_BYTES >> 20)
        yield b" " * 16

    response = requests.post(process.url, data=chunks(), headers={"Content-Type": "application/json"}, timeout=120)
    assert response.status_code == 413 and "body over" in response.json()["error"]


def test_a_message_firestore_cannot_store_is_rejected_alone_and_the_rest_of_its_batch_taken(send_batch):
    body = batch_of(500, "big-int")  # three commits of 200: the bad message in the last
    body["messages"][450]["content"] = {"text": "x", "n": 2**70}
    response = send_batch(body)
    assert response.status_code == 202, response.text
    assert response.json()["rejected"] == [
        {"index": 450, "error": "content.n is an integer outside 64 bits, which Firestore can't store"}
    ]
    assert response.json()["accepted"] == len(of_batch("big-int")) == 499


def test_a_rejection_naming_a_field_of_any_length_is_short_and_the_rest_of_its_batch_taken(send_batch):
    body = batch_of(2, "long-name")  # the reason names the caller's field, a name of 1.1 MB here
    body["messages"][1]["content"] = {"text": "x", "k" * 1_100_000: "see you \ud83d"}
    response = send_batch(body)
    assert response.status_code == 202, response.text[:300]
    [rejected] = response.json()["rejected"]
    assert rejected["index"] == 1 and rejected["error"].startswith("content.kkk") and len(rejected["error"]) < 200
    assert response.json()["accepted"] == len(of_batch("long-name")) == 1 and batches.get("long-name").stored


def test_a_batch_whose_rejections_could_not_be_recorded_is_refused_whole_before_anything_is_stored(send_batch):
    # 9,999 different reasons, each naming its own field: more than the batch document holds.
    messages = [{"phone": phone(i), "content": {"text": "x", f"k{i:050d}": [[1]]}} for i in range(10_000)]
    messages[0] = {"phone": phone(0), "content": CONTENT}
    response = send_batch({"batch_id": "reasons", "messages": messages})
    assert response.status_code == 400 and "reasons" in response.json()["error"], response.text[:300]
    assert of_batch("reasons") == [] and batches.get("reasons") is None


def test_progress_rates_the_first_minute_over_the_seconds_it_has_run(firestore):
    now = store.now()
    for i in range(300):  # 200 created over the last 10 s, at 20 a second; 100 still to create
        sent = now - timedelta(seconds=10 - i / 20) if i < 200 else None
        state = State.SENT if sent else State.PENDING
        store.messages().document(f"m-{i}").set(
            Message(f"m-{i}", phone(i), AGENT, state=state, sent_at=sent, batch_id="young").to_doc()
        )
    shown = batches.progress("young", now)
    assert 19 <= shown["creates_per_second"]["recent"] <= 21  # not 200 / 60
    assert 4 <= shown["seconds_left"] <= 6


def test_progress_mean_rate_is_creates_over_the_gaps_between_them(firestore):
    now = store.now()
    for i in range(3):  # created 2 s, 1 s and 0 s ago: one a second
        sent = now - timedelta(seconds=2 - i)
        message = Message(f"m-{i}", phone(i), AGENT, state=State.SENT, sent_at=sent, batch_id="paced")
        store.messages().document(f"m-{i}").set(message.to_doc())
    assert batches.progress("paced", now)["creates_per_second"]["mean"] == 1.0  # not 3 in 2 s


def test_a_batch_through_the_rbm_queue_is_created_at_the_queue_rate_once_each(functions, queues, rbm):
    port = free_port()
    # The worker as deployed: its commits set the retry timers, and a task makes one RBM try.
    env = {"RBM_API_ENDPOINT": rbm.url, **SWEEP_ENV, **queues(f"http://127.0.0.1:{port}")}
    functions("process_due_work", env=env | {"LEASE_SECONDS": "30", "RETRY_BACKOFF_SECONDS": "1"}, port=port)
    sender = functions("send_batch", env=env)
    rbm.fail_share("create", 0.1, seed=3, status=429)
    response = requests.post(sender.url, json=batch_of(120, "queued", revoke_after_seconds=600), timeout=120)
    assert response.status_code == 202 and response.json()["accepted"] == 120
    wait_for(lambda: {m.state for m in of_batch("queued")} == {State.SENT}, timeout=90, interval=0.5)
    accepted = accepted_creates(rbm)
    assert len(accepted) == 120 and set(accepted.values()) == {1}  # 0 duplicates
    # The queue is the rate limit: creates in any second stay within its token bucket (rate + burst).
    creates = [r["time"] for r in rbm.requests if r["kind"] == "create"]
    assert max_in_window(creates) <= 2 * RATE
