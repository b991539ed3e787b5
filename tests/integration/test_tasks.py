"""functions/tasks.py against the Cloud Tasks fake: a task is created once,
arrives at its time with its OIDC token, and an enqueue retries what is
transient within its deadline and fails fast on the rest."""

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2

from functions import tasks
from tests.support import wait_for

QUEUE = "projects/test-project/locations/us-central1/queues/due-work"
AUDIENCE = "https://worker.example"
ACCOUNT = "tasks@test-project.iam.gserviceaccount.com"


@pytest.fixture
def queue(cloud_tasks, monkeypatch):
    """The fake as CLOUD_TASKS_ENDPOINT, with the queue QUEUE; a new client for the test."""
    monkeypatch.setenv("CLOUD_TASKS_ENDPOINT", cloud_tasks.url)
    monkeypatch.setenv("TASKS_TIMEOUT_SECONDS", "1")
    tasks._client.cache_clear()
    client = tasks_v2.CloudTasksClient(
        transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": cloud_tasks.url}
    )
    client.create_queue(parent=QUEUE.rsplit("/queues/", 1)[0], queue=tasks_v2.Queue(name=QUEUE))
    yield QUEUE
    tasks._client.cache_clear()


def enqueue(task_target, due, message_id="m-1", queue=QUEUE):
    body = json.dumps({"message_id": message_id}).encode()
    name = tasks.task_id(message_id, "revoke", due)
    return tasks.enqueue(queue, name, f"{task_target.url}/work", body, due, AUDIENCE, ACCOUNT)


def test_a_task_is_created_once_and_arrives_at_its_time_with_its_token(queue, task_target, cloud_tasks):
    due = datetime.now(UTC) + timedelta(seconds=0.5)
    assert enqueue(task_target, due) is True
    assert enqueue(task_target, due) is False  # already enqueued: no second timer
    name = tasks.task_id("m-1", "revoke", due)
    assert tasks.exists(QUEUE, name) is True
    [got] = wait_for(lambda: task_target.of(name), timeout=5)
    assert due.timestamp() <= got["time"] <= due.timestamp() + 0.2
    assert json.loads(got["body"]) == {"message_id": "m-1"}
    assert got["headers"]["Content-Type"] == "application/json"
    token = got["headers"]["Authorization"].removeprefix("Bearer ").split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert (claims["aud"], claims["email"]) == (AUDIENCE, ACCOUNT)
    assert enqueue(task_target, due) is False  # ran: the name stays taken for an hour
    assert len(task_target.of(name)) == 1
    assert wait_for(lambda: not tasks.exists(QUEUE, name), timeout=5)  # ran: no longer in the queue


def test_a_new_due_time_is_a_new_task(queue, task_target):
    due = datetime.now(UTC) + timedelta(seconds=60)
    assert enqueue(task_target, due) is True
    assert enqueue(task_target, due + timedelta(milliseconds=1)) is True
    assert tasks.exists(QUEUE, tasks.task_id("m-1", "revoke", due + timedelta(milliseconds=2))) is False


def test_transient_refusals_are_retried_within_the_deadline(queue, task_target, cloud_tasks):
    cloud_tasks.script("create_task", [503, 429, 500])
    assert enqueue(task_target, datetime.now(UTC)) is True
    wait_for(lambda: task_target.got, timeout=5)


def test_a_refusal_that_will_not_change_fails_without_retries(queue, task_target, cloud_tasks):
    calls = cloud_tasks.operations()
    with pytest.raises(tasks.EnqueueError, match="NotFound"):
        enqueue(task_target, datetime.now(UTC), queue=QUEUE.replace("due-work", "missing"))
    with pytest.raises(tasks.EnqueueError, match="BadRequest"):
        enqueue(task_target, datetime.now(UTC) + timedelta(days=31))
    assert cloud_tasks.operations() - calls == 2  # one call each


def test_an_unreachable_service_fails_within_the_deadline(queue, task_target, cloud_tasks):
    cloud_tasks.stop()
    started = time.monotonic()
    with pytest.raises(tasks.EnqueueError):
        enqueue(task_target, datetime.now(UTC))
    with pytest.raises(tasks.EnqueueError):
        tasks.exists(QUEUE, "t-1")
    assert time.monotonic() - started < 10.0  # TASKS_TIMEOUT_SECONDS=1, with room for a loaded machine


def test_a_naive_schedule_time_is_refused(queue, task_target):
    with pytest.raises(ValueError):
        tasks.enqueue(QUEUE, "t-1", f"{task_target.url}/work", b"{}", datetime.now(), AUDIENCE, ACCOUNT)
