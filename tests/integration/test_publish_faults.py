"""Pub/Sub answering an error now and then, as it does in bad periods ("504 Deadline
Exceeded", UNKNOWN "Stream removed"): a gRPC proxy in front of the emulator
(local/grpc_faults.py) fails chosen Publish calls, and the publishers retry what
google-cloud-pubsub's own publish policy retries, within PUBLISH_TIMEOUT_SECONDS."""

import time

import grpc
import pytest
import requests

from functions import pubsub
from local.processes import PROJECT, pull_all
from tests.integration.test_webhook import TOKEN, receipt, signed

PUBLISH = "google.pubsub.v1.Publisher/Publish"
# The codes google-cloud-pubsub retries (pubsub.RETRIED, from the library's publish policy).
TRANSIENT = ("ABORTED", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "UNKNOWN")


@pytest.fixture
def publisher(pubsub_faults, monkeypatch):
    """pubsub.py of this process, its client talking to the emulator through `pubsub_faults`."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_faults.host)
    monkeypatch.setenv("PUBLISH_TIMEOUT_SECONDS", "3")
    pubsub._client.cache_clear()
    pubsub._publish_rpc.cache_clear()
    pubsub.topic_path.cache_clear()
    yield pubsub
    pubsub._client.cache_clear()
    pubsub._publish_rpc.cache_clear()
    pubsub.topic_path.cache_clear()


@pytest.mark.parametrize("code", TRANSIENT)
def test_one_transient_answer_is_retried_and_the_publish_goes_through(publisher, pubsub_faults, topic, code):
    events = topic("events")
    pubsub_faults.fail(PUBLISH, grpc.StatusCode[code], "Stream removed")
    message_id = publisher.publish(events.topic, b"event", {"kind": "user_event"})
    assert message_id and pubsub_faults.calls[PUBLISH] == 2
    assert pull_all(PROJECT, events.subscription, wait_seconds=3, expect=1) == [(b"event", {"kind": "user_event"})]


def test_an_answer_the_library_does_not_retry_fails_at_once(publisher, pubsub_faults, topic):
    pubsub_faults.fail(PUBLISH, grpc.StatusCode.PERMISSION_DENIED, "denied")
    with pytest.raises(pubsub.PublishError, match="PermissionDenied"):
        publisher.publish(topic("events").topic, b"event", {})
    assert pubsub_faults.calls[PUBLISH] == 1


def test_transient_answers_are_retried_only_within_the_publish_timeout(publisher, pubsub_faults, topic):
    pubsub_faults.fail(PUBLISH, grpc.StatusCode.UNAVAILABLE, "down", times=10_000)
    started = time.monotonic()
    with pytest.raises(pubsub.PublishError):
        publisher.publish(topic("events").topic, b"event", {})
    assert time.monotonic() - started < 3 + 2  # PUBLISH_TIMEOUT_SECONDS, and the last attempt's return
    assert pubsub_faults.calls[PUBLISH] > 2


def test_the_webhook_answers_200_when_its_first_publish_is_answered_unknown(functions, pubsub_faults, topic):
    events = topic("events")
    process = functions(
        "receive_webhook",
        env={"RBM_CLIENT_TOKEN": TOKEN, "RBM_EVENTS_TOPIC": events.topic, "PUBSUB_EMULATOR_HOST": pubsub_faults.host},
    )
    pubsub_faults.fail(PUBLISH, grpc.StatusCode.UNKNOWN, "Stream removed")
    body, headers = signed(receipt())
    response = requests.post(process.url, data=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert pubsub_faults.calls[PUBLISH] == 2
    assert len(pull_all(PROJECT, events.subscription, wait_seconds=3, expect=1)) == 1
