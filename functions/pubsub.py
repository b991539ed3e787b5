"""Publishing to Pub/Sub: one client per instance, one synchronous call per event.

The library's batching publisher suits streams, not a webhook that must wait
for each publish: it holds a message up to 10 ms for company and starts a
commit thread per batch. Calling the Publish RPC directly costs one round
trip and no thread, with retries bounded by the time the caller waits.
"""

import functools
import time
from collections.abc import Callable
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions, gapic_v1, grpc_helpers
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
# The protobuf classes under the library's proto-plus types: built and read
# directly, a request and its answer cost no per-field marshalling.
_RAW_MESSAGE = pubsub_v1.types.PubsubMessage.pb()
_RAW_REQUEST = pubsub_v1.types.PublishRequest.pb()
_RAW_RESPONSE = pubsub_v1.types.PublishResponse.pb()
# The Publish method of the google.pubsub.v1.Publisher service (google/pubsub/v1/pubsub.proto).
_PUBLISH_METHOD = "/google.pubsub.v1.Publisher/Publish"


class PublishError(RuntimeError):
    """Pub/Sub did not confirm the publish in time: the caller must not ack."""


@functools.cache
def _client() -> pubsub_v1.PublisherClient:
    return pubsub_v1.PublisherClient()


@functools.cache
def _publish_rpc() -> Callable[..., Any]:
    """The Publish RPC on the client's own gRPC channel (its credentials and
    endpoint, the emulator's too), on raw protobuf messages, its gRPC errors raised
    as google.api_core exceptions. Called directly rather than through the client's
    `publish` method, whose wrappers (routing header, a retry and a timeout
    decorator built anew on every call, a logging interceptor) and proto-plus
    marshalling cost the webhook a few tenths of a millisecond of CPU per event
    (bench/webhook.py)."""
    stub = _client().transport.grpc_channel.unary_unary(
        _PUBLISH_METHOD,
        request_serializer=_RAW_REQUEST.SerializeToString,
        response_deserializer=_RAW_RESPONSE.FromString,
    )
    rpc: Callable[..., Any] = grpc_helpers.wrap_errors(stub)
    return rpc


def _call(request: Any, timeout: float) -> list[str]:
    """One Publish request (raw protobuf), retried on the answers in RETRIED until
    `timeout` seconds have passed; each attempt gets what is left of them. Answers
    the message ids."""
    deadline = time.monotonic() + timeout

    def attempt() -> list[str]:
        answer = _publish_rpc()(
            request, timeout=max(deadline - time.monotonic(), 0.001), metadata=_routing(request.topic)
        )
        return list(answer.message_ids)

    ids: list[str] = retries.retry_target(
        attempt, retries.if_exception_type(*RETRIED), retries.exponential_sleep_generator(0.05, 1.0), timeout=timeout
    )
    return ids


@functools.cache
def topic_path(topic: str) -> str:
    path: str = _client().topic_path(config.project(), topic)
    return path


@functools.cache
def _routing(path: str) -> tuple[tuple[str, str], ...]:
    """The routing header the client's own publish sends with a topic's requests."""
    header: tuple[str, str] = gapic_v1.routing_header.to_grpc_metadata((("topic", path),))
    return (header,)


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
            _RAW_MESSAGE(data=d, attributes=a, ordering_key=k) for (d, a), k in keyed[start : start + MAX_PER_CALL]
        ]
        try:
            ids += _call(_RAW_REQUEST(topic=topic_path(topic), messages=chunk), timeout)
        except Exception as exc:  # the library raises many types; all mean "not confirmed"
            raise PublishError(f"{type(exc).__name__}: {exc}"[:300]) from exc
    return ids
