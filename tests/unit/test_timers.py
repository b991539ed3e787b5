"""Which commits set timers (timers.schedule / schedule_all), and what each timer's task is:
one per duty whose due time changed, on the duty's queue, named by the due time, never
raising when Cloud Tasks fails."""

import json
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from functions import tasks, timers
from functions.model import Fallback, Message, State

RBM_QUEUE = "projects/p/locations/l/queues/rbm-calls"
SMS_QUEUE = "projects/p/locations/l/queues/sms-sends"
WORKER = "https://worker.example/process_due_work"
ACCOUNT = "tasks@p.iam.gserviceaccount.com"


@pytest.fixture
def created(monkeypatch):
    """Both queues configured; tasks.enqueue records (queue, name, url, body, time, audience, account)."""
    monkeypatch.setenv("RBM_TASKS_QUEUE", RBM_QUEUE)
    monkeypatch.setenv("SMS_TASKS_QUEUE", SMS_QUEUE)
    monkeypatch.setenv("WORKER_URL", WORKER)
    monkeypatch.setenv("TASKS_SERVICE_ACCOUNT", ACCOUNT)
    calls = []
    monkeypatch.setattr(tasks, "enqueue", lambda *args: calls.append(args) or True)
    return calls


def now():
    return datetime.now(UTC)


def sent(due=None, **fields) -> Message:
    return Message("m-1", "+447700900001", "agent", state=State.SENT, next_action_at=due, **fields)


def test_a_new_due_time_sets_one_task_at_it_for_the_worker(created):
    due = now() + timedelta(seconds=10)
    timers.schedule(sent(None), sent(due))
    [(queue, name, url, body, at, audience, account)] = created
    assert (queue, name, url, at, audience, account) == (
        RBM_QUEUE,
        tasks.task_id("m-1", "revoke", due),
        WORKER,
        due,
        WORKER,
        ACCOUNT,
    )
    assert json.loads(body) == {"duty": "revoke", "message_ids": ["m-1"], "due_at": due.isoformat()}


def test_a_fallback_timer_goes_to_the_sms_queue(created):
    due = now()
    before = sent(None, fallback=Fallback.WAITING, fallback_text="x")
    after = Message("m-1", "+447700900001", "agent", state=State.REVOKED, fallback=Fallback.DUE, fallback_at=due)
    timers.schedule(before, after)
    assert [(c[0], c[1]) for c in created] == [(SMS_QUEUE, tasks.task_id("m-1", "fallback", due))]


def test_a_commit_that_sets_both_due_times_sets_both_timers(created):
    due = now()
    after = sent(due, fallback=Fallback.DUE, fallback_at=due + timedelta(seconds=5))
    timers.schedule(None, after)
    assert sorted(c[0] for c in created) == [RBM_QUEUE, SMS_QUEUE]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(sent(datetime(2030, 1, 1, tzinfo=UTC)), sent(datetime(2030, 1, 1, tzinfo=UTC)), id="unchanged"),
        pytest.param(sent(datetime(2030, 1, 1, tzinfo=UTC)), sent(None), id="cleared"),
        pytest.param(None, sent(datetime(2030, 1, 1, tzinfo=UTC), tracked=False), id="untracked"),
        pytest.param(
            None,
            Message("m-1", "+44", "a", state=State.DELIVERED, next_action_at=datetime(2030, 1, 1, tzinfo=UTC)),
            id="state-not-swept",
        ),
    ],
)
def test_a_commit_that_sets_no_new_due_time_sets_no_timer(created, before, after):
    timers.schedule(before, after)
    assert created == []


def test_a_due_time_beyond_cloud_tasks_horizon_is_left_to_the_safety_net(created):
    timers.schedule(None, sent(now() + timedelta(days=31)))
    assert created == []
    timers.schedule(None, sent(now() + timedelta(days=29)))
    assert len(created) == 1


def test_without_the_duty_s_queue_no_timer_is_set_nor_google_cloud_tasks_loaded(monkeypatch, created):
    monkeypatch.delenv("RBM_TASKS_QUEUE")
    monkeypatch.delitem(sys.modules, "functions.tasks")
    timers.schedule(None, sent(now()))
    assert created == []
    assert "functions.tasks" not in sys.modules


def test_a_failed_enqueue_is_logged_never_raised(monkeypatch, created, capsys):
    def refuse(*args):
        raise tasks.EnqueueError("ServiceUnavailable: try later")

    monkeypatch.setattr(tasks, "enqueue", refuse)
    timers.schedule(None, sent(now()))
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (line["event"], line["message_id"], line["duty"]) == ("timer_not_set", "m-1", "revoke")
    assert "ServiceUnavailable" in line["reason"]


def test_schedule_all_enqueues_a_batch_in_parallel(monkeypatch, created):
    running, most, lock = [0], [0], threading.Lock()

    def slow(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        created.append(args)
        return True

    monkeypatch.setattr(tasks, "enqueue", slow)
    due = now()
    pairs = [(None, Message(f"m-{i}", "+44", "a", state=State.SENT, next_action_at=due)) for i in range(40)]
    timers.schedule_all(pairs)
    assert sorted(c[1] for c in created) == sorted(tasks.task_id(f"m-{i}", "revoke", due) for i in range(40))
    assert 1 < most[0] <= timers.PARALLELISM
