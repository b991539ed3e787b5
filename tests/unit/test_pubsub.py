"""pubsub.publish_batch on a fake gRPC channel: what it sends, what it retries, and when it gives up."""

from types import SimpleNamespace

import grpc
import pytest

from functions import pubsub


class RpcError(grpc.RpcError):
    """A gRPC error as the channel raises it: a code, details and trailing metadata."""

    def __init__(self, code: grpc.StatusCode):
        super().__init__()
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._code.name

    def trailing_metadata(self) -> tuple:
        return ()


@pytest.fixture
def channel(monkeypatch):
    """A channel whose Publish answers from `answers` (an error code, or ids) and records requests."""
    fake = SimpleNamespace(requests=[], answers=[], methods=[])

    def unary_unary(method, request_serializer, response_deserializer):
        fake.methods.append(method)

        def call(request, timeout, metadata):
            fake.requests.append(request_serializer(request))
            fake.metadata = metadata
            answer = fake.answers.pop(0) if fake.answers else fake.answers_forever
            if isinstance(answer, grpc.StatusCode):
                raise RpcError(answer)
            return response_deserializer(pubsub._RAW_RESPONSE(message_ids=answer).SerializeToString())

        return call

    fake.answers_forever = ["id"]
    client = SimpleNamespace(
        transport=SimpleNamespace(grpc_channel=SimpleNamespace(unary_unary=unary_unary)),
        topic_path=lambda project, topic: f"projects/{project}/topics/{topic}",
    )
    monkeypatch.setattr(pubsub, "_client", lambda: client)
    pubsub._publish_rpc.cache_clear()
    pubsub.topic_path.cache_clear()
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    monkeypatch.setenv("PUBLISH_TIMEOUT_SECONDS", "0.3")
    yield fake
    pubsub._publish_rpc.cache_clear()
    pubsub.topic_path.cache_clear()


def test_publishes_the_data_and_attributes_in_one_request_and_answers_the_ids(channel):
    channel.answers = [["1", "2"]]
    assert pubsub.publish_batch("t", [(b"a", {"kind": "x"}), (b"b", {})]) == ["1", "2"]
    [sent] = channel.requests
    request = pubsub._RAW_REQUEST.FromString(sent)
    assert request.topic == "projects/p/topics/t"
    assert [(m.data, dict(m.attributes)) for m in request.messages] == [(b"a", {"kind": "x"}), (b"b", {})]
    assert channel.methods == ["/google.pubsub.v1.Publisher/Publish"]
    assert channel.metadata == (("x-goog-request-params", "topic=projects/p/topics/t"),)


def test_a_transient_error_is_retried(channel):
    channel.answers = [grpc.StatusCode.UNAVAILABLE, ["1"]]
    assert pubsub.publish("t", b"a", {}) == "1"
    assert len(channel.requests) == 2


def test_a_permanent_error_is_not_retried(channel):
    channel.answers = [grpc.StatusCode.NOT_FOUND]
    with pytest.raises(pubsub.PublishError, match="NotFound"):
        pubsub.publish("t", b"a", {})
    assert len(channel.requests) == 1


def test_transient_errors_give_up_once_the_publish_timeout_has_passed(channel):
    channel.answers_forever = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(pubsub.PublishError, match=r"RetryError|ServiceUnavailable"):
        pubsub.publish("t", b"a", {})
    assert len(channel.requests) >= 2
