"""Push delivery with production's concurrency, for the emulator.

Pub/Sub pushes many messages of a subscription at once, adjusting how many are
outstanding to the rate of success answers (https://cloud.google.com/pubsub/docs/push,
"Push subscription workflow"; "Push backoff" for failures). The emulator's
own push has about two requests outstanding per subscription, so a slow
endpoint or a burst of messages is held up behind it, which production is not.
`Pusher` delivers a pull subscription of the emulator to its endpoints (one, or
several standing for several instances: the least busy gets the next message)
the way a push subscription does, with up to `concurrency` requests outstanding
per endpoint: the same wrapped JSON body, acknowledged on a success status,
otherwise left to be redelivered (the subscription's dead-letter policy counts
the attempts). The stack's external mode pushes the outcome events with it
(`--outcomes-push-url`).
"""

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from google.cloud import pubsub_v1

SUCCESS = {102, 200, 201, 202, 204}  # the statuses a push endpoint acknowledges with (the push reference above)


def push_body(received, subscription: str) -> dict:
    """The wrapped push request of one pulled message (a ReceivedMessage)."""
    message = received.message
    published = message.publish_time.isoformat().replace("+00:00", "Z")
    return {
        "message": {
            "data": base64.b64encode(message.data).decode(),
            "attributes": dict(message.attributes),
            "messageId": message.message_id,
            "publishTime": published,
        }
        | ({"orderingKey": message.ordering_key} if message.ordering_key else {}),
        "subscription": subscription,
    }


class Pusher:
    """Delivers `project`'s pull subscription `subscription` to `endpoints`, at most
    `concurrency` requests at a time per endpoint, until stop(); counts what was
    `delivered` and what `failed`. Needs PUBSUB_EMULATOR_HOST set."""

    def __init__(
        self,
        project: str,
        subscription: str,
        endpoints: str | list[str],
        concurrency: int,
        timeout: float,
        backoff: float,
    ):
        """`timeout`: seconds a request may take (the ack deadline); `backoff`: seconds
        before a failed message is released for redelivery (the minimum backoff)."""
        self.path = f"projects/{project}/subscriptions/{subscription}"
        self.busy = dict.fromkeys([endpoints] if isinstance(endpoints, str) else endpoints, 0)
        self.concurrency = concurrency * len(self.busy)
        self.timeout, self.backoff = timeout, backoff
        self.delivered = self.failed = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._stop = threading.Event()
        self._http = requests.Session()
        self._http.trust_env = False  # loopback only
        self._subscriber = self._pool = self._thread = None

    def start(self) -> "Pusher":
        self._subscriber = pubsub_v1.SubscriberClient()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="push")
        self._thread = threading.Thread(target=self._loop, name=f"push {self.path}", daemon=True)
        self._thread.start()
        return self

    def _free(self) -> int:
        """Takes every free slot, waiting for one; answers how many it took."""
        if not self._slots.acquire(timeout=0.5):
            return 0
        taken = 1
        while taken < self.concurrency and self._slots.acquire(blocking=False):
            taken += 1
        return taken

    def _loop(self) -> None:
        while not self._stop.is_set():
            taken = self._free()
            if not taken:
                continue
            try:
                received = self._subscriber.pull(
                    request={"subscription": self.path, "max_messages": taken}, timeout=2
                ).received_messages
            except Exception:  # nothing to pull within the timeout, or the emulator stopping
                received = []
            for _ in range(taken - len(received)):
                self._slots.release()
            if not received:
                self._stop.wait(0.1)
            for message in received:
                self._pool.submit(self._deliver, message)

    def _deliver(self, received) -> None:
        with self._lock:
            endpoint = min(self.busy, key=self.busy.__getitem__)
            self.busy[endpoint] += 1
        try:
            try:
                status = self._http.post(
                    endpoint, json=push_body(received, self.path), timeout=self.timeout
                ).status_code
            except requests.RequestException:
                status = None  # endpoint down: redelivered, as a push is
            with self._lock:
                self.delivered += status in SUCCESS
                self.failed += status not in SUCCESS
            if status in SUCCESS:
                self._subscriber.acknowledge(request={"subscription": self.path, "ack_ids": [received.ack_id]})
            elif not self._stop.wait(self.backoff):
                self._subscriber.modify_ack_deadline(
                    request={"subscription": self.path, "ack_ids": [received.ack_id], "ack_deadline_seconds": 0}
                )
        except Exception:  # the emulator stopping: the message stays unacknowledged
            pass
        finally:
            with self._lock:
                self.busy[endpoint] -= 1
            self._slots.release()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
