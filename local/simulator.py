"""The RBM platform, simulated: FakeRbm's REST API, plus devices that receive
messages, users who write, and signed webhooks sent as the platform sends them
(retried with backoff until they get a 200; duplicated or reordered if asked).

Tests meet the platform's timing cases with it: a DELIVERED after a successful
revoke, TTL revocations, events that come back after the webhook answered 503.
Developers drive a relay, local or deployed, from their own machine with it:

    python -m local.simulator --webhook-url http://127.0.0.1:8080 --client-token T \\
        --register --device +15550000001:online --user-writes +15550000001 hello
"""

import argparse
import base64
import collections
import heapq
import itertools
import json
import random
import re
import secrets
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import requests

from functions.signature import sign
from local.fake_rbm import FakeRbm, now_rfc3339

DEVICE_MODES = ("online", "offline", "not_rcs")


def _expires_in(body: dict) -> float | None:
    """Seconds until a create's `ttl` or `expireTime` runs out, if it has one."""
    if "ttl" in body:
        return float(body["ttl"][:-1])
    if "expireTime" in body:
        expiry = datetime.fromisoformat(body["expireTime"])
        return max(0.0, (expiry - datetime.now(UTC)).total_seconds())
    return None


def _event_agent(agent_id: str) -> str:
    """The agent as events name it, `<id>@rbm.goog` (guides/build/events), whichever
    form the API call that sent the message gave (Google's samples give the part before it)."""
    return agent_id if agent_id.endswith("@rbm.goog") else f"{agent_id}@rbm.goog"


class Simulator(FakeRbm):
    """FakeRbm plus simulated devices and users, and a webhook sender.

        with Simulator("http://127.0.0.1:8080", "token") as rbm:
            rbm.add_device("+15550000001", "online", read_after=1)
            ...  # point RBM_API_ENDPOINT at rbm.url and send a message
            assert rbm.wait_delivered(eventType="READ")

    A phone never added behaves as in FakeRbm: its messages stay queued.
    Timing: `delivery_delay` from create (or coming online) to receipt;
    webhook retries wait `retry_base` doubling up to `retry_cap` seconds, and
    stop once a webhook is `max_age` seconds old. `shuffle` holds up to
    `shuffle_window` events for at most `shuffle_hold` seconds and sends them
    in an order drawn from `seed`. `senders` threads post webhooks;
    `on_attempt(record)` is called after each attempt, e.g. to print it.
    """

    def __init__(
        self,
        webhook_url: str,
        client_token: str,
        agent_id: str = "demo-agent@rbm.goog",
        port: int = 0,
        seed: int = 0,
        *,
        delivery_delay: float = 0.05,
        retry_base: float = 0.2,
        retry_cap: float = 600.0,
        max_age: float = 7 * 86400.0,
        duplicate_all: bool = False,
        shuffle: bool = False,
        shuffle_window: int = 4,
        shuffle_hold: float = 0.2,
        senders: int = 1,
        timeout: float = 10.0,
        on_attempt: Callable[[dict], None] | None = None,
    ):
        self.webhook_url, self.client_token, self.agent_id, self.seed = webhook_url, client_token, agent_id, seed
        self.delivery_delay, self.retry_base, self.retry_cap, self.max_age = (
            delivery_delay,
            retry_base,
            retry_cap,
            max_age,
        )
        self.duplicate_all, self.shuffle, self.shuffle_window, self.shuffle_hold = (
            duplicate_all,
            shuffle,
            shuffle_window,
            shuffle_hold,
        )
        self.senders, self.timeout, self.on_attempt = senders, timeout, on_attempt
        self._threads: list[threading.Thread] = []
        self._stopping = False  # tells the clock and the sender to end
        self._envelope_ids = itertools.count(1)
        super().__init__(port)

    def reset(self) -> None:
        """Forget devices, users' options, webhooks and scheduled work as well."""
        super().reset()
        with self._lock:
            self._devices: dict[str, dict] = {}  # phone -> {online, read_after}
            self._races, self._ttl_failures = set(), set()  # phones
            self._webhooks: list[dict] = []
            self._ready: collections.deque[dict] = collections.deque()  # webhooks due for an attempt
            self._window: list[dict] = []  # held back by shuffle
            self._timers: list[tuple] = []  # heap of (due, seq, fn, args)
            self._seq = itertools.count()
            self._rng = random.Random(self.seed)

    # Devices

    def add_device(
        self, phone: str, mode: str, online_after: float | None = None, read_after: float | None = None
    ) -> None:
        """online: receives messages after `delivery_delay`; offline: comes online
        after `online_after` seconds, or never; not_rcs: create answers 404.
        A device that receives a message reads it `read_after` seconds later, if set."""
        if mode not in DEVICE_MODES:
            raise ValueError(f"mode must be one of {DEVICE_MODES}")
        self.set_phone(phone, "not_rcs" if mode == "not_rcs" else "accept")
        with self._lock:
            self._devices[phone] = {"online": False, "read_after": read_after}
            if mode == "online":
                self.set_online(phone)
            elif mode == "offline" and online_after is not None:
                self._after(online_after, self.set_online, phone)

    def set_online(self, phone: str, online: bool = True) -> None:
        """The device connects (whatever is queued for it arrives) or disconnects."""
        with self._lock:
            self._devices.setdefault(phone, {"read_after": None})["online"] = online
            for message_id, message in self._messages.items():
                if online and message["phone"] == phone and message["state"] == "queued":
                    self._after(self.delivery_delay, self._deliver_if_online, message_id)

    def delivery_race(self, phone: str, on: bool = True) -> None:
        """A revoke of this phone's message answers 200, and the device gets it anyway
        just after: the DELIVERED-after-REVOKED race the RBM reference warns about."""
        with self._lock:
            (self._races.add if on else self._races.discard)(phone)

    def ttl_revoke_fails(self, phone: str, on: bool = True) -> None:
        """When a message to this phone expires, the platform's own revoke fails:
        TTL_EXPIRATION_REVOKE_FAILED, and the message stays deliverable."""
        with self._lock:
            (self._ttl_failures.add if on else self._ttl_failures.discard)(phone)

    def mark_delivered(self, message_id: str) -> bool:
        """The device got a queued message now, online or not; DELIVERED follows."""
        with self._lock:
            if self._messages.get(message_id, {}).get("state") != "queued":
                return False
            self._deliver(message_id)
            return True

    def _queued(self, message_id: str, message: dict) -> None:
        expires_in = _expires_in(message["body"])
        if expires_in is not None:
            self._after(expires_in, self._expire, message_id)
        self._after(self.delivery_delay, self._deliver_if_online, message_id)

    def _revoked(self, message_id: str, message: dict) -> None:
        if message["phone"] in self._races:
            self._after(self.delivery_delay, self._deliver, message_id)

    def _deliver_if_online(self, message_id: str) -> None:
        message = self._messages.get(message_id)
        if message and message["state"] == "queued" and self._devices.get(message["phone"], {}).get("online"):
            self._deliver(message_id)

    def _deliver(self, message_id: str) -> None:
        message = self._messages[message_id]
        message["state"] = "delivered"
        self._user_event(message["phone"], "DELIVERED", message["agent_id"], messageId=message_id)
        read_after = self._devices.get(message["phone"], {}).get("read_after")
        if read_after is not None:
            self._after(read_after, self._read, message_id)

    def _read(self, message_id: str) -> None:
        message = self._messages.get(message_id)
        if message and message["state"] == "delivered":
            message["state"] = "read"
            self._user_event(message["phone"], "READ", message["agent_id"], messageId=message_id)

    def _expire(self, message_id: str) -> None:
        """The platform's TTL revoke: the message is gone, or (told to fail) still deliverable."""
        message = self._messages.get(message_id)
        if message is None or message["state"] != "queued":
            return
        failed = message["phone"] in self._ttl_failures
        if not failed:
            message["state"] = "revoked"
        self._emit(
            {
                "phoneNumber": message["phone"],
                "messageId": message_id,
                "agentId": _event_agent(message["agent_id"]),
                "eventType": "TTL_EXPIRATION_REVOKE_FAILED" if failed else "TTL_EXPIRATION_REVOKED",
                "eventId": str(uuid.uuid4()),
                "sendTime": now_rfc3339(),
            }
        )

    # Users

    def user_writes(
        self,
        phone: str,
        text: str | None = None,
        suggestion: str | dict | None = None,
        location: tuple[float, float] | dict | None = None,
    ) -> str:
        """A user message with exactly one of: text; suggestion (the postbackData,
        or a dict of suggestionResponse fields); location ((lat, lng) or a dict).
        Returns its messageId."""
        if [text, suggestion, location].count(None) != 2:
            raise ValueError("give exactly one of text, suggestion, location")
        if text is not None:
            content: dict[str, Any] = {"text": text}
        elif suggestion is not None:
            fields = {"postbackData": suggestion, "text": suggestion} if isinstance(suggestion, str) else suggestion
            content = {"suggestionResponse": {"type": "REPLY", **fields}}
        else:
            latitude, longitude = (
                (location["latitude"], location["longitude"]) if isinstance(location, dict) else location
            )
            content = {"location": {"latitude": latitude, "longitude": longitude}}
        message_id = str(uuid.uuid4())
        self._emit(
            {
                "senderPhoneNumber": phone,
                "agentId": self.agent_id,
                "messageId": message_id,
                "sendTime": now_rfc3339(),
                **content,
            }
        )
        return message_id

    def user_typing(self, phone: str) -> str:
        """IS_TYPING; returns its eventId."""
        return self._user_event(phone, "IS_TYPING")

    def subscribe(self, phone: str) -> str:
        return self._user_event(phone, "SUBSCRIBE")

    def unsubscribe(self, phone: str) -> str:
        return self._user_event(phone, "UNSUBSCRIBE")

    def _user_event(self, phone: str, event_type: str, agent_id: str | None = None, **fields: str) -> str:
        event_id = str(uuid.uuid4())
        self._emit(
            {
                "senderPhoneNumber": phone,
                "eventType": event_type,
                "eventId": event_id,
                **fields,
                "sendTime": now_rfc3339(),
                "agentId": _event_agent(agent_id or self.agent_id),
            }
        )
        return event_id

    # Webhooks

    def register_webhook(self) -> bool:
        """The platform's handshake when a webhook URL is configured: the endpoint
        must answer 200 with the secret as its plain-text body."""
        secret = secrets.token_urlsafe(16)
        try:
            response = requests.post(
                self.webhook_url, json={"clientToken": self.client_token, "secret": secret}, timeout=self.timeout
            )
        except requests.RequestException:
            return False
        return response.status_code == 200 and response.text == secret

    @property
    def webhooks(self) -> list[dict]:
        """Each webhook: event, envelope, statuses (None: no answer), attempts,
        delivered, gave_up, duplicate (the second copy under duplicate_all), created."""
        with self._lock:
            return [dict(r, statuses=list(r["statuses"])) for r in self._webhooks]

    def pending_webhooks(self) -> list[dict]:
        """Webhooks still waiting for their 200."""
        return [r for r in self.webhooks if not (r["delivered"] or r["gave_up"])]

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every webhook got its 200 or was given up; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: all(r["delivered"] or r["gave_up"] for r in self._webhooks), timeout)

    def wait_delivered(self, timeout: float = 5.0, **fields: Any) -> dict | None:
        """The first event with these fields that got its 200, once it has; None on timeout.
        E.g. wait_delivered(eventType="DELIVERED", messageId=mid)."""

        def find():
            return next(
                (
                    r["event"]
                    for r in self._webhooks
                    if r["delivered"] and all(r["event"].get(k) == v for k, v in fields.items())
                ),
                None,
            )

        with self._lock:
            return self._lock.wait_for(find, timeout)

    def _emit(self, event: dict) -> None:
        """Queue a webhook for one event, twice under duplicate_all."""
        agent = re.sub(r"[^a-z0-9-]", "-", event["agentId"].split("@")[0].lower())
        with self._lock:
            envelope = {
                "message": {
                    "data": base64.b64encode(json.dumps(event).encode()).decode(),
                    "messageId": str(next(self._envelope_ids)),
                    "publishTime": now_rfc3339(),
                    "attributes": {},
                },
                "subscription": f"projects/rbm-partner/subscriptions/rbm-agent-{agent}",
            }
            for duplicate in (False, True)[: 1 + self.duplicate_all]:
                record = {
                    "event": event,
                    "envelope": envelope,
                    "statuses": [],
                    "attempts": 0,
                    "delivered": False,
                    "gave_up": False,
                    "duplicate": duplicate,
                    "created": time.monotonic(),
                }
                self._webhooks.append(record)
                if self.shuffle:
                    self._window.append(record)
                    if len(self._window) == 1:
                        self._after(self.shuffle_hold, self._flush_window)
                    if len(self._window) >= self.shuffle_window:
                        self._flush_window()
                else:
                    self._ready.append(record)
            self._lock.notify_all()

    def _flush_window(self) -> None:
        self._rng.shuffle(self._window)
        self._ready.extend(self._window)
        self._window = []
        self._lock.notify_all()

    def _post(self, record: dict) -> int | None:
        """One attempt, signed over the decoded data bytes as RBM signs."""
        data = base64.b64decode(record["envelope"]["message"]["data"])
        headers = {"Content-Type": "application/json", "X-Goog-Signature": sign(self.client_token, data)}
        try:
            return requests.post(
                self.webhook_url, data=json.dumps(record["envelope"]), headers=headers, timeout=self.timeout
            ).status_code
        except requests.RequestException:
            return None

    def _send_loop(self) -> None:
        """Attempt ready webhooks; anything but 200 is retried after a backoff. With one
        sender (the default) a slow webhook delays every event, as the platform's one
        queue per partner does; more senders make a busy test faster."""
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._stopping or self._ready)
                if self._stopping:
                    return
                record, ready = self._ready.popleft(), self._ready
            status = self._post(record)
            with self._lock:
                record["attempts"] += 1
                record["statuses"].append(status)
                delay = min(self.retry_base * 2 ** (record["attempts"] - 1), self.retry_cap)
                if status == 200:
                    record["delivered"] = True
                elif time.monotonic() + delay - record["created"] > self.max_age:
                    record["gave_up"] = True
                else:
                    self._after(delay, ready.append, record)  # after a reset(), into the forgotten queue
                self._lock.notify_all()
                attempt = dict(record, statuses=list(record["statuses"]))
            if self.on_attempt:
                self.on_attempt(attempt)

    # Time and threads

    def _after(self, seconds: float, fn: Callable, *args: Any) -> None:
        """Run fn(*args) under the lock once `seconds` have passed."""
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + seconds, next(self._seq), fn, args))
            self._lock.notify_all()

    def _timer_loop(self) -> None:
        with self._lock:
            while not self._stopping:
                if self._timers and self._timers[0][0] <= time.monotonic():
                    _, _, fn, args = heapq.heappop(self._timers)
                    try:
                        fn(*args)
                    except Exception:  # a bug in the simulator must show, not stop the clock
                        traceback.print_exc()
                    self._lock.notify_all()
                else:
                    self._lock.wait(self._timers[0][0] - time.monotonic() if self._timers else None)

    def start(self, port: int | None = None) -> "Simulator":
        super().start(port)
        with self._lock:
            if not self._threads:
                self._stopping = False
                self._threads = [threading.Thread(target=self._timer_loop, daemon=True, name="rbm-clock")]
                self._threads += [
                    threading.Thread(target=self._send_loop, daemon=True, name=f"rbm-webhooks-{i}")
                    for i in range(self.senders)
                ]
                for thread in self._threads:
                    thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, the clock and the senders; what is pending stays pending."""
        super().stop()
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(self.timeout + 1)


def _device(text: str) -> tuple[str, str, float | None]:
    phone, _, rest = text.partition(":")
    mode, _, seconds = rest.partition(":")
    if mode not in DEVICE_MODES or (seconds and mode != "offline") or not re.fullmatch(r"(\d+(\.\d*)?)?", seconds):
        raise argparse.ArgumentTypeError(
            f"expected PHONE:online, PHONE:offline[:SECONDS] or PHONE:not_rcs, got {text!r}"
        )
    return phone, mode, float(seconds) if seconds else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.simulator",
        description=(
            "Simulated RBM platform on 127.0.0.1: prints its URL (use it as RBM_API_ENDPOINT), "
            "sends signed webhooks to --webhook-url, and serves until Ctrl-C."
        ),
    )
    parser.add_argument("--webhook-url", required=True)
    parser.add_argument("--client-token", required=True)
    parser.add_argument("--agent-id", default="demo-agent@rbm.goog")
    parser.add_argument("--port", type=int, default=0, help="port to bind; a free one by default")
    parser.add_argument("--register", action="store_true", help="do the webhook handshake first; exit 1 if it fails")
    parser.add_argument(
        "--device",
        action="append",
        default=[],
        type=_device,
        metavar="PHONE:MODE[:SECONDS]",
        help="online, offline[:seconds until online] or not_rcs; repeatable",
    )
    parser.add_argument("--read-after", type=float, help="devices read a message this many seconds after receiving it")
    parser.add_argument("--user-writes", nargs=2, action="append", default=[], metavar=("PHONE", "TEXT"))
    for flag in ("--user-typing", "--subscribe", "--unsubscribe"):
        parser.add_argument(flag, action="append", default=[], metavar="PHONE")
    parser.add_argument(
        "--retry-base", type=float, default=1.0, help="first webhook retry delay, seconds (doubles, up to 600)"
    )
    parser.add_argument("--once", action="store_true", help="send the webhooks asked for, wait for them, then exit")
    args = parser.parse_args(argv)

    def report(record: dict) -> None:
        kind = record["event"].get("eventType", "user message")
        print(f"webhook {kind} attempt {record['attempts']}: {record['statuses'][-1]}", file=sys.stderr, flush=True)

    simulator = Simulator(
        args.webhook_url, args.client_token, args.agent_id, retry_base=args.retry_base, on_attempt=report
    )
    simulator.start(args.port)
    print(simulator.url, flush=True)
    try:
        if args.register:
            registered = simulator.register_webhook()
            print(f"webhook handshake: {'ok' if registered else 'FAILED'}", file=sys.stderr, flush=True)
            if not registered:
                return 1
        for phone, mode, online_after in args.device:
            simulator.add_device(phone, mode, online_after=online_after, read_after=args.read_after)
        for phone, text in args.user_writes:
            simulator.user_writes(phone, text=text)
        for action in ("user_typing", "subscribe", "unsubscribe"):
            for phone in getattr(args, action):
                getattr(simulator, action)(phone)
        if args.once:
            return 0 if simulator.wait_idle(60) and not any(r["gave_up"] for r in simulator.webhooks) else 1
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
