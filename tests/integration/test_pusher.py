"""local/pusher.py on the Pub/Sub emulator: push delivery with many requests
outstanding, the wrapped push body, redelivery of what was not acknowledged."""

import base64
import threading
import time
import uuid

from local.fakehttp import FakeServer
from local.processes import PROJECT, create_push_subscription, create_topic, publish
from local.pusher import Pusher
from tests.support import wait_for


class Endpoint(FakeServer):
    """Records each push (arrival time, body); holds each for `hold` seconds,
    then answers the next of `statuses` for its message id (200 once they run out)."""

    def __init__(self, hold: float = 0.0, statuses=()):
        super().__init__()
        self.hold, self.statuses, self.pushes = hold, list(statuses), []
        self.answered: dict[str, list[int]] = {}

    def handle(self, request):
        body = request.json()
        with self._lock:
            self.pushes.append((time.monotonic(), body))
            answered = self.answered.setdefault(body["message"]["messageId"], [])
            status = self.statuses[len(answered)] if len(answered) < len(self.statuses) else 200
            answered.append(status)
        time.sleep(self.hold)
        return status, {}


def subscription(endpoint: Endpoint, concurrency: int):
    suffix = uuid.uuid4().hex[:8]
    topic, sub = f"work-{suffix}", f"work-pull-{suffix}"
    create_topic(PROJECT, topic)
    create_push_subscription(PROJECT, topic, sub, "", ack_deadline_seconds=60)
    pusher = Pusher(
        PROJECT, sub, f"{endpoint.url}/projects/{PROJECT}/topics/{topic}", concurrency, timeout=30, backoff=0.5
    )
    return topic, sub, pusher


def test_holds_many_requests_outstanding_at_once(pubsub_emulator):
    """Ten handlers that each take 3 s are all under way at once, where the
    emulator's own push has about two outstanding."""
    with Endpoint(hold=3.0) as endpoint:
        topic, _, pusher = subscription(endpoint, concurrency=16)
        with pusher.start():
            published = time.monotonic()
            threads = [threading.Thread(target=publish, args=(PROJECT, topic, f"item {i}".encode())) for i in range(10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wait_for(lambda: len(endpoint.pushes) == 10, timeout=10)
            assert max(at for at, _ in endpoint.pushes) - published < 2.5  # all before the first answer


def test_the_body_is_the_wrapped_push_request(pubsub_emulator):
    with Endpoint() as endpoint:
        topic, sub, pusher = subscription(endpoint, concurrency=4)
        with pusher.start():
            message_id = publish(PROJECT, topic, b'{"duty": "revoke"}', duty="revoke")
            wait_for(lambda: endpoint.pushes, timeout=10)
    body = endpoint.pushes[0][1]
    assert body["subscription"] == f"projects/{PROJECT}/subscriptions/{sub}"
    message = body["message"]
    assert base64.b64decode(message["data"]) == b'{"duty": "revoke"}'
    assert message["attributes"] == {"duty": "revoke"} and message["messageId"] == message_id
    assert message["publishTime"].endswith("Z")


def test_a_failed_push_is_delivered_again_and_an_acknowledged_one_is_not(pubsub_emulator):
    with Endpoint(statuses=[500, 503]) as endpoint:
        topic, _, pusher = subscription(endpoint, concurrency=4)
        with pusher.start():
            message_id = publish(PROJECT, topic, b"x")
            wait_for(lambda: endpoint.answered.get(message_id) == [500, 503, 200], timeout=20)
            time.sleep(2)  # long enough for a fourth delivery, were the 200 not acknowledged
        assert endpoint.answered[message_id] == [500, 503, 200]
