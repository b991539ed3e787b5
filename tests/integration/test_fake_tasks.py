"""The official Cloud Tasks client against the local fake, which dispatches to
a small HTTP target: the fake must behave as the Cloud Tasks reference says
the service does (schedule_time, de-duplication, rate, concurrency, retries,
OIDC, purge, limits)."""

import base64
import itertools
import json
import math
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2
from google.protobuf import duration_pb2, timestamp_pb2

from local.fake_tasks import deliver, max_in_window
from tests.support import wait_for

LOCATION = "projects/test-project/locations/us-central1"
SERVICE_ACCOUNT = "worker@test-project.iam.gserviceaccount.com"


@pytest.fixture
def client(cloud_tasks):
    return tasks_v2.CloudTasksClient(
        transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": cloud_tasks.url}
    )


@pytest.fixture
def queue(client):
    """`queue(rate=…, concurrency=…, **retry)` → a new queue's full name."""

    def make(rate=500.0, concurrency=1000, **retry):
        durations = {
            k: duration_pb2.Duration(seconds=v) for k, v in retry.items() if k.endswith(("backoff", "duration"))
        }
        counts = {k: v for k, v in retry.items() if k not in durations}
        created = client.create_queue(
            parent=LOCATION,
            queue=tasks_v2.Queue(
                name=f"{LOCATION}/queues/q-{uuid.uuid4().hex[:8]}",
                rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=rate, max_concurrent_dispatches=concurrency),
                retry_config=tasks_v2.RetryConfig(**durations, **counts),
            ),
        )
        return created.name

    return make


def timestamp(epoch: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromtimestamp(epoch, UTC))
    return stamp


def http_task(task_target, name=None, eta=None, audience="", body=b'{"id": "m1"}'):
    return tasks_v2.Task(
        name=name or "",
        schedule_time=timestamp(eta) if eta else None,
        http_request=tasks_v2.HttpRequest(
            url=f"{task_target.url}/run",
            headers={"Content-Type": "application/json"},
            body=body,
            oidc_token=tasks_v2.OidcToken(service_account_email=SERVICE_ACCOUNT, audience=audience),
        ),
    )


def claims(headers: dict) -> dict:
    payload = headers["Authorization"].removeprefix("Bearer ").split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_a_task_arrives_at_its_schedule_time_with_the_documented_headers_and_an_oidc_token(client, queue, task_target):
    name = queue()
    eta = time.time() + 1.0
    created = client.create_task(
        parent=name, task=http_task(task_target, f"{name}/tasks/t1", eta, "https://worker.example")
    )
    assert created.name == f"{name}/tasks/t1"

    [got] = wait_for(lambda: task_target.of("t1"), timeout=5)
    assert eta <= got["time"] <= eta + 0.2
    headers = got["headers"]
    assert headers["X-CloudTasks-QueueName"] == name.rsplit("/", 1)[1]
    assert (headers["X-CloudTasks-TaskRetryCount"], headers["X-CloudTasks-TaskExecutionCount"]) == ("0", "0")
    assert float(headers["X-CloudTasks-TaskETA"]) == pytest.approx(eta, abs=1e-5)
    assert (headers["Content-Type"], got["body"]) == ("application/json", b'{"id": "m1"}')
    assert (claims(headers)["aud"], claims(headers)["email"]) == ("https://worker.example", SERVICE_ACCOUNT)


def test_without_an_audience_the_token_is_for_the_url(client, queue, task_target):
    client.create_task(parent=queue(), task=http_task(task_target, audience=""))
    [got] = wait_for(lambda: task_target.got, timeout=5)
    assert claims(got["headers"])["aud"] == f"{task_target.url}/run"


def test_a_name_is_refused_while_its_task_exists_and_for_an_hour_after_it_ran(client, queue, task_target, cloud_tasks):
    name = queue()
    task = http_task(task_target, f"{name}/tasks/once", time.time() + 0.3)
    client.create_task(parent=name, task=task)
    with pytest.raises(exceptions.Conflict, match="already exists"):
        client.create_task(parent=name, task=task)
    wait_for(lambda: task_target.of("once"), timeout=5)
    wait_for(lambda: not client.list_tasks(parent=name).tasks, timeout=5)
    with pytest.raises(exceptions.Conflict, match="existed too recently"):
        client.create_task(parent=name, task=task)
    assert len(task_target.of("once")) == 1
    assert len(cloud_tasks.dispatches(name)) == 1


def test_a_backlog_drains_at_the_queue_rate_and_never_faster(client, queue, task_target, cloud_tasks):
    rate = 20.0
    name = queue(rate=rate)
    client.pause_queue(name=name)  # the whole backlog waits first: the drain, not the creates, sets the pace
    for _ in range(60):
        client.create_task(parent=name, task=http_task(task_target))
    client.resume_queue(name=name)
    wait_for(lambda: len(task_target.got) == 60, timeout=15)
    times = sorted(g["time"] for g in task_target.got)
    # RateLimits is a token bucket of max_burst_size tokens (ceil(rate) here) refilled at the
    # rate: over the drain the pace is the rate, and after a stall of the target or of this
    # process one second may carry the bucket's tokens on top of it, never more.
    assert (len(times) - 1) / (times[-1] - times[0]) == pytest.approx(rate, rel=0.1)
    assert max_in_window(times, 1.0) <= math.ceil(rate) + rate
    assert cloud_tasks.operations() >= 60 + 60  # each create and each delivery is an operation
    stats = requests.get(f"{cloud_tasks.url}/fake/stats", timeout=5).json()  # the same records, for a fake process
    assert len(stats["queues"][name.rsplit("/", 1)[1]]["dispatches"]) == 60
    assert stats["operations"] == cloud_tasks.operations()


def test_a_resumed_queue_ramps_up_again_rather_than_bursting(client, queue, task_target):
    rate = 10.0
    name = queue(rate=rate)
    for _ in range(25):
        client.create_task(parent=name, task=http_task(task_target))
    wait_for(lambda: len(task_target.got) >= 3, timeout=5)
    client.pause_queue(name=name)
    time.sleep(1.5)  # paused with tasks waiting: long enough to fill a bucket of `rate` tokens
    resumed = time.time()
    client.resume_queue(name=name)
    wait_for(lambda: len(task_target.got) == 25, timeout=10)
    after = [g["time"] for g in task_target.got if g["time"] >= resumed]
    assert max_in_window(after, 1.0) <= rate * 1.1


def test_no_more_dispatches_run_at_once_than_the_queue_allows(client, queue, task_target, cloud_tasks):
    name = queue(concurrency=3)
    task_target.hold = 0.3
    for _ in range(9):
        client.create_task(parent=name, task=http_task(task_target))
    wait_for(lambda: len(task_target.got) == 9, timeout=10)
    assert task_target.max_running == cloud_tasks.max_running(name) == 3


def test_a_failed_task_is_retried_with_the_queue_backoff_until_its_attempts_run_out(client, queue, task_target):
    # min 1 s, one doubling: retries 1 s then 2 s after the failures; the third attempt is the last.
    name = queue(min_backoff=1, max_backoff=10, max_doublings=1, max_attempts=3)
    task_target.scripts["flaky"] = [(500, {}), (404, {}), (500, {})]
    client.create_task(parent=name, task=http_task(task_target, f"{name}/tasks/flaky"))
    attempts = wait_for(lambda: task_target.of("flaky", 3), timeout=8)
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(attempts)]
    assert gaps == [pytest.approx(1.0, abs=0.2), pytest.approx(2.0, abs=0.2)]
    headers = [a["headers"] for a in attempts]
    assert [h["X-CloudTasks-TaskRetryCount"] for h in headers] == ["0", "1", "2"]
    assert [h["X-CloudTasks-TaskExecutionCount"] for h in headers] == ["0", "0", "1"]  # 5xx answers are not counted
    assert [h.get("X-CloudTasks-TaskPreviousResponse") for h in headers] == [None, "500", "404"]
    wait_for(lambda: not client.list_tasks(parent=name).tasks, timeout=5)  # given up: deleted


def test_a_429_waits_for_retry_after_rather_than_the_backoff(client, queue, task_target):
    name = queue()  # the default min backoff is 0.1 s
    task_target.scripts["busy"] = [(429, {"Retry-After": "1"})]
    client.create_task(parent=name, task=http_task(task_target, f"{name}/tasks/busy"))
    first, second = wait_for(lambda: task_target.of("busy", 2), timeout=5)
    assert second["time"] - first["time"] >= 1.0


def test_503_answers_slow_the_whole_queue_down(client, queue, task_target):
    name = queue(rate=20.0)
    for i in range(3):
        task_target.scripts[f"e{i}"] = [(503, {})]
        client.create_task(parent=name, task=http_task(task_target, f"{name}/tasks/e{i}"))
    wait_for(lambda: len(task_target.got) >= 3, timeout=5)
    started = time.time()
    for i in range(4):
        client.create_task(parent=name, task=http_task(task_target, f"{name}/tasks/f{i}"))
    wait_for(lambda: all(task_target.of(f"f{i}") for i in range(4)), timeout=10)
    # Four tasks take 0.2 s at 20/s; after three 503s the queue runs at an eighth of that, recovering.
    assert max(task_target.of(f"f{i}")[0]["time"] for i in range(4)) - started > 0.8


def test_a_purge_deletes_every_task_and_their_names_stay_taken(client, queue, task_target, cloud_tasks):
    name = queue()
    for i in range(5):
        client.create_task(parent=name, task=http_task(task_target, f"{name}/tasks/p{i}", time.time() + 2))
    purged = client.purge_queue(name=name)
    assert purged.purge_time
    assert not client.list_tasks(parent=name).tasks and cloud_tasks.pending(name) == 0
    with pytest.raises(exceptions.Conflict):
        client.create_task(parent=name, task=http_task(task_target, f"{name}/tasks/p0"))


def test_a_paused_queue_holds_its_tasks_until_resumed(client, queue, task_target):
    name = queue()
    client.pause_queue(name=name)
    client.create_task(parent=name, task=http_task(task_target))
    time.sleep(0.3)  # long enough for a running queue to dispatch
    assert not task_target.got
    assert client.resume_queue(name=name).state == tasks_v2.Queue.State.RUNNING
    wait_for(lambda: task_target.got, timeout=5)


def google_status(call) -> str:
    """The canonical status name in the error the client raised for `call()`."""
    with pytest.raises(exceptions.GoogleAPICallError) as raised:
        call()
    return raised.value.response.json()["error"]["status"]


def test_the_fake_answers_the_reference_errors(client, queue, task_target):
    name = queue()
    too_far = http_task(task_target, eta=time.time() + 30 * 86400 + 60)
    assert google_status(lambda: client.create_task(parent=name, task=too_far)) == "INVALID_ARGUMENT"
    short = http_task(task_target)
    short.dispatch_deadline = duration_pb2.Duration(seconds=5)
    assert google_status(lambda: client.create_task(parent=name, task=short)) == "INVALID_ARGUMENT"
    missing = f"{LOCATION}/queues/missing"
    assert google_status(lambda: client.create_task(parent=missing, task=http_task(task_target))) == "NOT_FOUND"
    again = tasks_v2.Queue(name=name)
    assert google_status(lambda: client.create_queue(parent=LOCATION, queue=again)) == "ALREADY_EXISTS"
    fast = tasks_v2.Queue(
        name=f"{LOCATION}/queues/fast", rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=501)
    )
    assert google_status(lambda: client.create_queue(parent=LOCATION, queue=fast)) == "INVALID_ARGUMENT"

    got = client.get_queue(name=name)
    assert (got.rate_limits.max_burst_size, got.retry_config.max_attempts) == (500, 100)
    client.delete_queue(name=name)
    assert google_status(lambda: client.get_queue(name=name)) == "NOT_FOUND"


def test_scripted_api_errors_are_answered_in_turn_then_calls_behave(client, queue, task_target, cloud_tasks):
    name = queue()
    cloud_tasks.script("create_task", [503, 429])
    assert (
        google_status(lambda: client.create_task(parent=name, task=http_task(task_target), retry=None)) == "UNAVAILABLE"
    )
    assert (
        google_status(lambda: client.create_task(parent=name, task=http_task(task_target), retry=None))
        == "RESOURCE_EXHAUSTED"
    )
    client.create_task(parent=name, task=http_task(task_target), retry=None)
    wait_for(lambda: task_target.got, timeout=5)


def test_a_task_deleted_before_its_time_never_runs(client, queue, task_target):
    name = queue()
    created = client.create_task(parent=name, task=http_task(task_target, eta=time.time() + 0.3))
    client.delete_task(name=created.name)
    with pytest.raises(exceptions.NotFound):
        client.get_task(name=created.name)
    time.sleep(0.5)  # past the schedule time
    assert not task_target.got


def test_an_answer_later_than_the_dispatch_deadline_is_no_answer(task_target):
    # The service's deadlines are 15 s to 30 min; the delivery itself takes any.
    task_target.hold = 0.5
    assert deliver("POST", f"{task_target.url}/run", {}, b"", deadline=0.1) == (None, None)
    task_target.hold = 0.0
    assert deliver("POST", f"{task_target.url}/run", {}, b"", deadline=1.0) == (200, None)


def test_a_kept_alive_connection_the_target_closed_is_reopened_without_a_failed_attempt():
    # A target that answers as if keeping the connection alive, then closes it.
    listener = socket.create_server(("127.0.0.1", 0))
    served = []

    def serve():
        for _ in range(2):
            connection, _ = listener.accept()
            with connection:
                served.append(connection.recv(65536))
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/run"
    try:
        assert deliver("GET", url, {}, b"", 1.0) == (200, None)
        wait_for(lambda: len(served) == 1, timeout=5)
        time.sleep(0.05)  # the close reaches the client
        assert deliver("GET", url, {}, b"", 1.0) == (200, None)
    finally:
        thread.join(5)
        listener.close()
    assert len(served) == 2
