"""Fixtures that wire functions to the emulators and the local fakes."""

import json
import time
import uuid

import pytest

from local.fake_rbm import FakeRbm
from local.fake_sms import FakeTwilio
from local.fake_tasks import FakeTasks
from local.fakehttp import FakeServer, Request
from local.grpc_faults import FaultProxy
from local.processes import PROJECT, create_push_subscription, create_topic, publish


@pytest.fixture
def rbm():
    with FakeRbm() as fake:
        yield fake


@pytest.fixture
def twilio():
    with FakeTwilio(account_sid="AC" + "1" * 32, auth_token="twilio-secret") as fake:
        yield fake


@pytest.fixture
def sms_env(twilio):
    return {
        "SMS_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
        "TWILIO_AUTH_TOKEN": "twilio-secret",
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE": twilio.url,
    }


@pytest.fixture
def pubsub_faults(pubsub_emulator):
    """A gRPC proxy in front of the Pub/Sub emulator that fails the calls it is told to
    (local/grpc_faults.py); point a publisher at `pubsub_faults.host`."""
    proxy = FaultProxy(pubsub_emulator)
    yield proxy
    proxy.stop()


@pytest.fixture
def subscriber(functions, firestore, pubsub_emulator):
    """`subscriber("track_delivery")` → a function process fed by a push
    subscription on a fresh events topic, and a `send(event, **attributes)`."""

    def start(target, env=None):
        suffix = uuid.uuid4().hex[:8]
        topic, dead_letter = f"events-{suffix}", f"dead-{suffix}"
        create_topic(PROJECT, topic)
        create_topic(PROJECT, dead_letter)
        process = functions(target, env={"RBM_DEAD_LETTER_TOPIC": dead_letter, **(env or {})})
        create_push_subscription(
            PROJECT,
            topic,
            f"push-{suffix}",
            f"{process.url}/projects/{PROJECT}/topics/{topic}",
            dead_letter_topic=dead_letter,
            max_delivery_attempts=5,
        )

        def send(event, raw: bytes | None = None, **attributes):
            return publish(PROJECT, topic, raw if raw is not None else json.dumps(event).encode(), **attributes)

        send.dead_letter, send.process = dead_letter, process
        return send

    return start


class Target(FakeServer):
    """An HTTP target: records each request it gets (time, headers, body) and
    answers 200, or the statuses scripted for a task name in turn; holds each
    answer `hold` seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[dict] = []
        self.scripts: dict[str, list[tuple[int, dict]]] = {}
        self.hold = 0.0
        self.running = self.max_running = 0

    def handle(self, request: Request) -> tuple:
        with self._lock:
            task = request.headers.get("X-CloudTasks-TaskName", "")
            self.got.append({"time": time.time(), "headers": dict(request.headers), "body": request.body, "task": task})
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            script = self.scripts.get(task)
            status, headers = script.pop(0) if script else (200, {})
        time.sleep(self.hold)
        with self._lock:
            self.running -= 1
        return status, {}, headers

    def of(self, task: str, count: int = 1) -> list[dict] | None:
        """The requests for a task, once there are at least `count` of them."""
        with self._lock:
            got = [g for g in self.got if g["task"] == task]
        return got if len(got) >= count else None


@pytest.fixture
def cloud_tasks():
    """The Cloud Tasks fake (local/fake_tasks.py)."""
    with FakeTasks() as fake:
        yield fake


@pytest.fixture
def task_target():
    """A Target for Cloud Tasks deliveries."""
    with Target() as server:
        yield server
