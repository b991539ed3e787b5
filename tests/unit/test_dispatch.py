"""One scheduled pass (dispatch.run): without a queue it acts on what is due by now, once;
with one it is the safety net, which enqueues each overdue message whose timer is not in
its queue, under the timer's own name or, if that name is taken, the first free rerun name."""

import threading
from datetime import UTC, datetime, timedelta

import pytest

from functions import dispatch, revoke_expired, send_fallbacks, store, sweep, tasks, timers
from functions.model import Fallback, Message, State
from functions.sweep import Outcome
from functions.work_items import Duty

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
QUEUE = "projects/p/locations/l/queues/rbm-calls"


def overdue(i: int, seconds: float = 60.0, tracked: bool = True) -> Message:
    return Message(
        f"m-{i}",
        "+447700900001",
        "agent",
        state=State.SENT,
        tracked=tracked,
        next_action_at=T0 - timedelta(seconds=seconds),
    )


@pytest.fixture
def queried(monkeypatch):
    """sweep.due over a fixed list, recording the `until` of each query; store.now = T0."""
    calls, found = [], []
    monkeypatch.setattr(store, "now", lambda: T0)
    monkeypatch.setattr(sweep, "due", lambda s, until, after=None: calls.append(until) or iter(list(found)))
    monkeypatch.setattr(dispatch.time, "sleep", lambda seconds: pytest.fail("a pass waited"))
    return calls, found


def test_without_a_queue_a_pass_acts_once_on_what_is_due_by_now(monkeypatch, queried):
    calls, found = queried
    monkeypatch.delenv("RBM_TASKS_QUEUE", raising=False)
    found += [overdue(1), overdue(2, seconds=1)]
    acted = []

    def perform(s, ids, owner, deadline=None):
        acted.append(ids)
        return dict.fromkeys(ids, Outcome.REVOKED)

    monkeypatch.setattr(sweep, "perform", perform)
    monkeypatch.setattr(timers, "enqueue", lambda *a, **k: pytest.fail("enqueued without a queue"))
    summary = dispatch.run(revoke_expired.REVOKE)
    assert calls == [T0], "one query, of what is due by now: no polling, no look-ahead"
    assert acted == [["m-1", "m-2"]]
    assert summary["scanned"] == 2 and summary["revoked"] == 2
    assert "enqueued" not in summary


@pytest.fixture
def queue(monkeypatch, queried):
    """RBM_TASKS_QUEUE set; timers.exists / enqueue over an in-memory queue that records creates."""
    monkeypatch.setenv("RBM_TASKS_QUEUE", QUEUE)
    state = {"present": set(), "taken": set(), "created": [], "fail": set()}

    def exists(message_id, duty, due, rerun=None):
        if message_id in state["fail"]:
            raise tasks.EnqueueError("unavailable")
        return timers.name(message_id, duty, due, rerun) in state["present"]

    def enqueue(message_id, duty, due, rerun=None):
        name = timers.name(message_id, duty, due, rerun)
        if name in state["taken"] | state["present"]:
            return False
        state["created"].append((message_id, duty, due, rerun))
        state["present"].add(name)
        return True

    monkeypatch.setattr(timers, "exists", exists)
    monkeypatch.setattr(timers, "enqueue", enqueue)
    monkeypatch.setattr(sweep, "perform", lambda *a, **k: pytest.fail("the safety net acted itself"))
    # The stored messages: as the query found them, unless a test puts a newer one in "stored".
    state["stored"] = {}
    _, found = queried
    monkeypatch.setattr(
        store, "get_message", lambda i: state["stored"].get(i, next((m for m in found if m.message_id == i), None))
    )
    return state


def test_with_a_queue_a_pass_enqueues_only_what_is_overdue_beyond_the_slack(queue, queried):
    calls, found = queried
    found += [overdue(1)]
    summary = dispatch.run(revoke_expired.REVOKE)
    assert calls == [T0 - timedelta(seconds=dispatch.SAFETY_SLACK_SECONDS)]
    assert queue["created"] == [("m-1", Duty.REVOKE, T0 - timedelta(seconds=60), None)]
    assert summary | {"seconds": 0} == {
        "scanned": 1,
        "enqueued": 1,
        "present": 0,
        "done": 0,
        "not_enqueued": 0,
        "left": 0,
        "seconds": 0,
    }


def test_a_timer_in_its_queue_is_left_alone(queue, queried):
    _, found = queried
    found += [overdue(1)]
    queue["present"].add(timers.name("m-1", Duty.REVOKE, T0 - timedelta(seconds=60)))
    summary = dispatch.run(revoke_expired.REVOKE)
    assert queue["created"] == []
    assert summary["present"] == 1 and summary["enqueued"] == 0


def test_a_name_taken_by_a_task_that_ran_or_a_purge_is_enqueued_under_the_rerun_name(queue, queried):
    _, found = queried
    found += [overdue(1)]
    due = T0 - timedelta(seconds=60)
    queue["taken"].add(timers.name("m-1", Duty.REVOKE, due))  # ran, deleted or purged in the last hour
    summary = dispatch.run(revoke_expired.REVOKE)
    assert queue["created"] == [("m-1", Duty.REVOKE, due, 1)]
    assert summary["enqueued"] == 1
    # A second pass finds the rerun task in the queue.
    assert dispatch.run(revoke_expired.REVOKE)["present"] == 1
    assert len(queue["created"]) == 1


def test_a_rerun_task_still_queued_is_found_by_later_passes_and_one_that_ran_gets_the_next_name(
    queue, queried, monkeypatch
):
    """The rerun task a pass created may wait minutes (a purged queue under a backlog, a paused
    queue, a task being retried): the passes of the next minutes find it, and make no second
    task; once it ran (its name taken, gone from the queue) and the message is still due, the
    next rerun name is used."""
    _, found = queried
    found += [overdue(1)]
    due = T0 - timedelta(seconds=60)
    queue["taken"].add(timers.name("m-1", Duty.REVOKE, due))
    for minute in range(3):
        monkeypatch.setattr(dispatch.time, "time", lambda m=minute: 1_800_000_030.0 + 60 * m)
        dispatch.run(revoke_expired.REVOKE)
    assert len(queue["created"]) == 1
    [(_, _, _, first)] = queue["created"]
    queue["present"].remove(timers.name("m-1", Duty.REVOKE, due, first))  # it ran; the message is still due
    queue["taken"].add(timers.name("m-1", Duty.REVOKE, due, first))
    assert dispatch.run(revoke_expired.REVOKE)["enqueued"] == 1
    assert len({rerun for *_, rerun in queue["created"]}) == 2


def test_cloud_tasks_failing_for_one_message_does_not_stop_the_others(queue, queried):
    _, found = queried
    found += [overdue(1), overdue(2)]
    queue["fail"].add("m-1")
    summary = dispatch.run(revoke_expired.REVOKE)
    assert [c[0] for c in queue["created"]] == ["m-2"]
    assert (summary["not_enqueued"], summary["enqueued"]) == (1, 1)


def test_untracked_messages_are_not_enqueued(queue, queried):
    _, found = queried
    found += [overdue(1, tracked=False)]
    assert dispatch.run(revoke_expired.REVOKE)["scanned"] == 0
    assert queue["created"] == []


def test_a_pass_whose_time_is_spent_leaves_the_rest(queue, queried, monkeypatch):
    _, found = queried
    found += [overdue(1), overdue(2)]
    monkeypatch.setenv("SWEEP_BUDGET_SECONDS", "-1")
    summary = dispatch.run(revoke_expired.REVOKE)
    assert summary["scanned"] == 0, "not even read: a large backlog is left to the next pass"
    assert queue["created"] == []


def test_a_taken_name_whose_message_moved_on_gets_no_rerun(queue, queried):
    """A backlog: the pass read the message overdue, then its timer's task ran and did the
    work before the pass looked the task up; the message, read again, is no longer due then."""
    _, found = queried
    found += [overdue(1)]
    queue["taken"].add(timers.name("m-1", Duty.REVOKE, T0 - timedelta(seconds=60)))
    queue["stored"]["m-1"] = Message("m-1", "+447700900001", "agent", state=State.REVOKED)
    summary = dispatch.run(revoke_expired.REVOKE)
    assert queue["created"] == []
    assert summary["done"] == 1 and summary["enqueued"] == 0


def test_each_duty_has_its_own_queue(monkeypatch, queried):
    _, found = queried
    monkeypatch.setenv("RBM_TASKS_QUEUE", QUEUE)
    monkeypatch.delenv("SMS_TASKS_QUEUE", raising=False)
    monkeypatch.setenv("SMS_PROVIDER", "")
    found.append(
        Message(
            "m-9",
            "+447700900001",
            "agent",
            state=State.REVOKED,
            fallback=Fallback.DUE,
            fallback_at=T0,
            fallback_text="x",
        )
    )
    monkeypatch.setattr(timers, "enqueue", lambda *a, **k: pytest.fail("a fallback went to the RBM queue"))
    monkeypatch.setattr(sweep, "perform", lambda s, ids, owner, deadline=None: dict.fromkeys(ids, Outcome.SENT))
    assert dispatch.run(send_fallbacks.FALLBACK)["sent"] == 1


def test_a_pass_that_loses_the_race_for_the_timers_name_creates_no_second_task(queue, queried, monkeypatch):
    _, found = queried
    found += [overdue(1)]
    real = timers.enqueue

    def raced(message_id, duty, at, rerun=None):
        if rerun is None:  # another pass created the timer's task between our look-up and our create
            queue["present"].add(timers.name(message_id, duty, at))
            return False
        return real(message_id, duty, at, rerun)

    monkeypatch.setattr(timers, "enqueue", raced)
    assert dispatch.run(revoke_expired.REVOKE)["present"] == 1
    assert queue["created"] == []


def test_a_backlog_whose_reading_spends_the_budget_still_gets_what_was_read_first_enqueued(queue, queried, monkeypatch):
    """A purged queue under a backlog larger than a pass can read in its budget: the messages
    read first are enqueued while the rest is read, not left because reading spent the time
    (else every pass reads until its budget and enqueues nothing: timers lost for good)."""
    clock = [0.0]
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: clock[0])
    monkeypatch.setenv("SWEEP_BUDGET_SECONDS", "10")
    first = [overdue(i) for i in range(5)]

    def due(s, until, after=None):
        yield from first
        waited = threading.Event()  # the next page's read takes long: the first page's lookups run meanwhile
        for _ in range(200):
            if len(queue["created"]) == len(first) or waited.wait(0.01):
                break
        clock[0] = 11.0  # ... and when it comes back, the pass's budget is spent
        yield from (overdue(i) for i in range(5, 10))

    monkeypatch.setattr(sweep, "due", due)
    summary = dispatch.run(revoke_expired.REVOKE)
    assert sorted(c[0] for c in queue["created"]) == [m.message_id for m in first]
    assert summary["enqueued"] == len(first)
