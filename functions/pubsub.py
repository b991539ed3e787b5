"""Publishing to Pub/Sub: one client per instance, one synchronous call per event.

The library's batching publisher suits streams, not a webhook that must wait
for each publish: it holds a message up to 10 ms for company and starts a
commit thread per batch. Calling the Publish RPC directly costs one round
trip and no thread, with retries bounded by the time the caller waits.
"""

import functools

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions
from google.api_core import retry as retries

from functions import config

MAX_PER_CALL = 1000  # messages in one Publish request (cloud.google.com/pubsub/quotas)
# The answers google-cloud-pubsub's own Publish policy retries (the `publish` entry of
# _prep_wrapped_messages in google/pubsub_v1/services/publisher/transports/base.py):
# ABORTED, CANCELLED, DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED, UNAVAILABLE, UNKNOWN.
RETRIED = (
    exceptions.Aborted,
    exceptions.Cancelled,
    exceptions.DeadlineExceeded,
    exceptions.InternalServerError,
    exceptions.ResourceExhausted,
    exceptions.ServiceUnavailable,
    exceptions.Unknown,
)


class PublishError(RuntimeError):
    """Pub/Sub did not confirm the publish in time: the caller must not ack."""


@functools.cache
def _client() -> pubsub_v1.PublisherClient:
    return pubsub_v1.PublisherClient()


@functools.cache
def topic_path(topic: str) -> str:
    path: str = _client().topic_path(config.project(), topic)
    return path


def publish(topic: str, data: bytes, attributes: dict[str, str]) -> str:
    """Publishes and returns the server's message id, or raises PublishError."""
    return publish_batch(topic, [(data, attributes)])[0]


def publish_batch(
    topic: str, messages: list[tuple[bytes, dict[str, str]]], ordering_keys: list[str] | None = None
) -> list[str]:
    """Publishes (data, attributes) pairs, up to 1,000 per Publish call (Pub/Sub's
    limit per request), each with its ordering key if `ordering_keys` is given (the
    PubsubMessage field; a subscription with message ordering delivers one key's
    messages in publish order); returns their ids in order, or raises PublishError.
    Each call retries the answers in RETRIED until PUBLISH_TIMEOUT_SECONDS have passed
    (every attempt gets only what is left of them)."""
    timeout, ids = config.publish_timeout(), []
    keyed = list(zip(messages, ordering_keys or [""] * len(messages), strict=True))
    for start in range(0, len(keyed), MAX_PER_CALL):
        chunk = [
            pubsub_v1.types.PubsubMessage(data=d, attributes=a, ordering_key=k)
            for (d, a), k in keyed[start : start + MAX_PER_CALL]
        ]
        try:
            response = _client().api.publish(
                topic=topic_path(topic),
                messages=chunk,
                timeout=timeout,
                retry=retries.Retry(
                    initial=0.05, maximum=1.0, predicate=retries.if_exception_type(*RETRIED), timeout=timeout
                ),
            )
        except Exception as exc:  # the library raises many types; all mean "not confirmed"
            raise PublishError(f"{type(exc).__name__}: {exc}"[:300]) from exc
        ids += response.message_ids
    return ids
