"""Publishing to Pub/Sub: one client per instance, tuned for latency.

The library batches for 10 ms by default; a webhook that waits for every
publish pays that on each request, so a batch here is sent as soon as it has
one message.
"""

import functools

from google.api_core import retry as retries
from google.cloud import pubsub_v1

from functions import config


class PublishError(RuntimeError):
    """Pub/Sub did not confirm the publish in time: the caller must not ack."""


@functools.cache
def _client() -> pubsub_v1.PublisherClient:
    timeout = config.publish_timeout()
    return pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1, max_latency=0.001),
        # Stop retrying when the caller stops waiting, so an outage does not
        # pile up background retries.
        publisher_options=pubsub_v1.types.PublisherOptions(
            retry=retries.Retry(initial=0.05, maximum=1.0, timeout=timeout), timeout=timeout
        ),
    )


@functools.cache
def topic_path(topic: str) -> str:
    return _client().topic_path(config.project(), topic)


def publish(topic: str, data: bytes, attributes: dict[str, str]) -> str:
    """Publishes and waits for the server's confirmation; returns the message id."""
    try:
        future = _client().publish(topic_path(topic), data, **attributes)
        return future.result(timeout=config.publish_timeout())
    except Exception as exc:  # the library raises many types; all mean "not confirmed"
        raise PublishError(f"{type(exc).__name__}: {exc}"[:300]) from exc
