"""Task names of functions/tasks.py: deterministic, hash first, the due time as the attempt,
within Cloud Tasks' id rules."""

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.api_core import exceptions

from functions import tasks
from functions.tasks import task_id

DUE = datetime(2026, 12, 2, 4, 0, 0, 123456, tzinfo=UTC)


def test_a_task_id_is_the_message_hash_then_the_duty_and_due_millisecond():
    name = task_id("m-1", "revoke", DUE)
    assert re.fullmatch(r"[0-9a-f]{32}-revoke-1796184000123", name)
    assert task_id("m-1", "revoke", DUE) == name  # a retried enqueue names the same task
    assert task_id("m-1", "revoke", DUE.astimezone(timezone(timedelta(hours=2)))) == name  # the instant, not its zone
    others = {
        task_id("m-1", "revoke", DUE + timedelta(milliseconds=1)),  # a new due time: a new task
        task_id("m-1", "fallback", DUE),
        task_id("m-2", "revoke", DUE),
        task_id("m-1", "revoke", DUE, rerun=29_000_000),
    }
    assert len(others | {name}) == 5


def test_the_rerun_name_follows_the_timers_name():
    assert task_id("m-1", "revoke", DUE, rerun=29_436_480) == task_id("m-1", "revoke", DUE) + "-r29436480"


def test_any_message_id_gives_an_id_cloud_tasks_accepts():
    for message_id in ["", "+1555/0000?x", "é" * 1000, "a" * 5000]:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,500}", task_id(message_id, "fallback", DUE, rerun=12))


@pytest.mark.parametrize(
    ("duty", "due", "rerun"),
    [
        ("re-voke", DUE, None),
        ("", DUE, None),
        ("a" * 65, DUE, None),
        ("revoke", DUE.replace(tzinfo=None), None),
        ("revoke", DUE, -1),
    ],
)
def test_a_duty_that_could_blur_the_name_a_naive_time_or_a_negative_rerun_is_refused(duty, due, rerun):
    with pytest.raises(ValueError):
        task_id("m-1", duty, due, rerun)


class _Answer:
    """A REST answer to a refused CreateTask, as requests gives it to the exception."""

    def __init__(self, body):
        self.body = body

    def json(self):
        if isinstance(self.body, Exception):
            raise self.body
        return self.body


@pytest.mark.parametrize(
    ("error", "taken"),
    [
        (exceptions.AlreadyExists("taken"), True),
        (exceptions.Conflict("taken", response=_Answer({"error": {"status": "ALREADY_EXISTS"}})), True),
        (exceptions.Conflict("aborted", response=_Answer({"error": {"status": "ABORTED"}})), False),
        (exceptions.Conflict("no body", response=_Answer(ValueError("not JSON"))), False),
        (exceptions.Conflict("another shape", response=_Answer({"message": "x"})), False),
        (exceptions.Conflict("no answer"), False),
        (exceptions.NotFound("no queue"), False),
    ],
)
def test_only_already_exists_means_the_name_is_taken(error, taken):
    assert tasks._already_exists(error) is taken
