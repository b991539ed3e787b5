"""Fixtures that wire functions to the emulators and the local fakes."""

import json
import uuid

import pytest

from local.fake_rbm import FakeRbm
from local.fake_sms import FakeTwilio
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
