"""Publishing to Pub/Sub: one client per instance, one synchronous call per event.

The library's batching publisher suits streams, not a webhook that must wait
for each publish: it holds a message up to 10 ms for company and starts a
commit thread per batch. Calling the Publish RPC directly costs one round
trip and no thread, with retries bounded by the time the caller waits.
"""

import functools

from google.api_core import retry as retries
from google.cloud import pubsub_v1

from functions import config


class PublishError(RuntimeError):
    """Pub/Sub did not confirm the publish in time: the caller must not ack."""


@functools.cache
def _client() -> pubsub_v1.PublisherClient:
    return pubsub_v1.PublisherClient()


@functools.cache
def topic_path(topic: str) -> str:
    return _client().topic_path(config.project(), topic)


def publish(topic: str, data: bytes, attributes: dict[str, str]) -> str:
    """Publishes and returns the server's message id, or raises PublishError."""
    timeout = config.publish_timeout()
    message = pubsub_v1.types.PubsubMessage(data=data, attributes=attributes)
    try:
        response = _client().api.publish(
            topic=topic_path(topic), messages=[message], timeout=timeout,
            retry=retries.Retry(initial=0.05, maximum=1.0, timeout=timeout),
        )
        return response.message_ids[0]
    except Exception as exc:  # the library raises many types; all mean "not confirmed"
        raise PublishError(f"{type(exc).__name__}: {exc}"[:300]) from exc
