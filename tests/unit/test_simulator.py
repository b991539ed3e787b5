"""The RBM platform simulator: devices, users and webhooks, seen from the webhook.

A tiny HTTP receiver stands in for the relay's webhook: it checks nothing, so
every test checks the signature itself, independently of the simulator.
"""

import base64
import collections
import hashlib
import hmac
import itertools
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from local.simulator import Simulator

TOKEN = "client-token"
PHONE = "+15550000001"
AGENT = "agent-1@rbm.goog"
ROOT = Path(__file__).resolve().parents[2]
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


class Receiver:
    """A webhook endpoint on loopback: answers the handshake for its token, answers
    event POSTs with scripted statuses (then `default`), and keeps what came."""

    def __init__(self, token: str = TOKEN):
        self.token, self.default = token, 200
        self.script: collections.deque[int] = collections.deque()
        self.posts: list[tuple[float, str, bytes]] = []  # (time, signature, body)
        self.lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, text = receiver.answer(self.headers.get("X-Goog-Signature", ""), body)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/webhook"

    def answer(self, signature: str, body: bytes) -> tuple[int, str]:
        payload = json.loads(body)
        if "clientToken" in payload:
            return (200, payload["secret"]) if payload["clientToken"] == self.token else (403, "unknown token")
        with self.lock:
            self.posts.append((time.monotonic(), signature, body))
            self.lock.notify_all()
            return (self.script.popleft() if self.script else self.default), ""

    def events(self, n: int, timeout: float = 5.0) -> list[dict]:
        """The events of the first n POSTs (waiting for them), signatures verified."""
        with self.lock:
            assert self.lock.wait_for(lambda: len(self.posts) >= n, timeout), f"{len(self.posts)} of {n} webhooks came"
            posts = self.posts[:n]
        return [verified(signature, body) for _, signature, body in posts]

    def all_events(self) -> list[dict]:
        return self.events(len(self.posts), 0)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def verified(signature: str, body: bytes) -> dict:
    """The event in a webhook body, after checking the envelope and the signature."""
    envelope = json.loads(body)
    assert set(envelope) == {"message", "subscription"}
    assert envelope["subscription"].startswith("projects/rbm-partner/subscriptions/rbm-agent-")
    message = envelope["message"]
    assert isinstance(message["messageId"], str) and RFC3339.fullmatch(message["publishTime"])
    assert isinstance(message["attributes"], dict)
    data = base64.b64decode(message["data"])
    expected = base64.b64encode(hmac.new(TOKEN.encode(), data, hashlib.sha512).digest()).decode()
    assert hmac.compare_digest(signature, expected)
    return json.loads(data)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def make(receiver):
    """Simulators with fast timings, stopped after the test."""
    started = []

    def make(**options) -> Simulator:
        options = {"agent_id": AGENT, "delivery_delay": 0.02, "retry_base": 0.05, "retry_cap": 0.2} | options
        started.append(Simulator(options.pop("url", receiver.url), options.pop("token", TOKEN), **options).start())
        return started[-1]

    yield make
    for simulator in started:
        simulator.stop()


@pytest.fixture
def sim(make):
    return make()


def create(sim, phone=PHONE, message_id=None, agent=AGENT, **fields):
    """agentMessages.create on a simulator (or at a URL); (message id, status)."""
    message_id = message_id or str(uuid.uuid4())
    response = requests.post(
        f"{getattr(sim, 'url', sim)}/v1/phones/{phone.replace('+', '%2B')}/agentMessages",
        params={"messageId": message_id, "agentId": agent},
        json={"contentMessage": {"text": "hi"}, **fields},
        timeout=5,
    )
    return message_id, response.status_code


def revoke(sim, message_id, phone=PHONE):
    return requests.delete(
        f"{sim.url}/v1/phones/{phone.replace('+', '%2B')}/agentMessages/{message_id}",
        params={"agentId": AGENT},
        timeout=5,
    ).status_code


def assert_quiet(receiver, n, seconds=0.2):
    """No more than n webhooks came within `seconds`."""
    time.sleep(seconds)
    assert len(receiver.posts) == n


USER_EVENT_FIELDS = {"senderPhoneNumber", "eventType", "eventId", "sendTime", "agentId"}
SERVER_EVENT_FIELDS = {"phoneNumber", "messageId", "agentId", "eventType", "eventId", "sendTime"}


# Devices


def test_online_device_gets_the_message_then_reads_it(sim, receiver):
    sim.add_device(PHONE, "online", read_after=0.05)
    message_id, status = create(sim)
    assert status == 200
    delivered, read = receiver.events(2)
    for event, event_type in ((delivered, "DELIVERED"), (read, "READ")):
        assert set(event) == USER_EVENT_FIELDS | {"messageId"}
        assert (event["eventType"], event["senderPhoneNumber"], event["messageId"], event["agentId"]) == (
            event_type,
            PHONE,
            message_id,
            AGENT,
        )
        assert RFC3339.fullmatch(event["sendTime"])
    assert delivered["eventId"] != read["eventId"]
    assert sim.wait_idle(5) and sim.messages[message_id]["state"] == "read"
    assert [(w["event"]["eventType"], w["statuses"], w["attempts"], w["delivered"]) for w in sim.webhooks] == [
        ("DELIVERED", [200], 1, True),
        ("READ", [200], 1, True),
    ]
    assert sim.wait_delivered(eventType="READ", messageId=message_id) == read


def test_events_name_the_agent_with_rbm_goog_whichever_form_the_call_gave(sim, receiver):
    """Google's samples call with the part before @rbm.goog; events carry the full id."""
    sim.add_device(PHONE, "online")
    create(sim, agent=AGENT.removesuffix("@rbm.goog"))
    [delivered] = receiver.events(1)
    assert delivered["agentId"] == AGENT


def test_offline_device_gets_its_messages_when_it_comes_online(sim, receiver):
    started = time.monotonic()
    sim.add_device(PHONE, "offline", online_after=0.3)
    first, _ = create(sim)
    second, _ = create(sim)
    assert_quiet(receiver, 0, 0.15)
    assert sim.messages[first]["state"] == "queued"
    assert [e["messageId"] for e in receiver.events(2)] == [first, second]
    assert time.monotonic() - started >= 0.3


def test_not_rcs_device_gets_404(sim):
    sim.add_device(PHONE, "not_rcs")
    assert create(sim)[1] == 404
    assert sim.messages == {}
    with pytest.raises(ValueError):
        sim.add_device(PHONE, "asleep")


def test_revoke_while_queued_answers_200_and_nothing_arrives(sim, receiver):
    sim.add_device(PHONE, "offline")
    message_id, _ = create(sim)
    assert revoke(sim, message_id) == 200
    sim.set_online(PHONE)
    assert_quiet(receiver, 0)
    assert sim.messages[message_id]["state"] == "revoked"


def test_revoke_after_delivery_answers_404(sim, receiver):
    sim.add_device(PHONE, "online")
    message_id, _ = create(sim)
    assert receiver.events(1)[0]["eventType"] == "DELIVERED"
    assert revoke(sim, message_id) == 404


def test_delivery_race_delivers_after_a_successful_revoke(sim, receiver):
    sim.add_device(PHONE, "offline")
    sim.delivery_race(PHONE)
    message_id, _ = create(sim)
    assert revoke(sim, message_id) == 200
    [event] = receiver.events(1)
    assert (event["eventType"], event["messageId"]) == ("DELIVERED", message_id)
    assert sim.messages[message_id]["state"] == "delivered"


def test_mark_delivered_sends_delivered(sim, receiver):
    message_id, _ = create(sim)
    assert sim.mark_delivered(message_id) and not sim.mark_delivered(message_id)
    assert receiver.events(1)[0]["messageId"] == message_id


# Platform TTL


def soon(seconds):
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("field", ["ttl", "expireTime"])
def test_expired_message_is_revoked_by_the_platform(sim, receiver, field):
    sim.add_device(PHONE, "offline")
    message_id, status = create(sim, **{field: "0.3s" if field == "ttl" else soon(0.3)})
    assert status == 200
    assert_quiet(receiver, 0, 0.15)
    [event] = receiver.events(1)
    assert set(event) == SERVER_EVENT_FIELDS
    assert (event["eventType"], event["phoneNumber"], event["messageId"], event["agentId"]) == (
        "TTL_EXPIRATION_REVOKED",
        PHONE,
        message_id,
        AGENT,
    )
    assert revoke(sim, message_id) == 404
    sim.set_online(PHONE)
    assert_quiet(receiver, 1)


def test_failed_ttl_revoke_leaves_the_message_deliverable(sim, receiver):
    sim.add_device(PHONE, "offline")
    sim.ttl_revoke_fails(PHONE)
    message_id, _ = create(sim, ttl="0.1s")
    [event] = receiver.events(1)
    assert (event["eventType"], event["messageId"]) == ("TTL_EXPIRATION_REVOKE_FAILED", message_id)
    assert sim.messages[message_id]["state"] == "queued"
    sim.set_online(PHONE)
    assert receiver.events(2)[1]["eventType"] == "DELIVERED"


def test_a_delivered_message_does_not_expire(sim, receiver):
    sim.add_device(PHONE, "online")
    create(sim, ttl="0.1s")
    assert_quiet(receiver, 1, 0.3)
    assert receiver.events(1)[0]["eventType"] == "DELIVERED"


# Users


def test_user_messages_and_events(sim, receiver):
    ids = [
        sim.user_writes(PHONE, text="hello"),
        sim.user_writes(PHONE, suggestion="yes_please"),
        sim.user_writes(PHONE, location=(51.5, -0.12)),
        sim.user_typing(PHONE),
        sim.subscribe(PHONE),
        sim.unsubscribe(PHONE),
    ]
    text, suggestion, location, typing, subscribe, unsubscribe = receiver.events(6)
    for event, message_id in zip((text, suggestion, location), ids, strict=False):
        assert {"senderPhoneNumber", "agentId", "messageId", "sendTime"} < set(event)
        assert (event["senderPhoneNumber"], event["agentId"], event["messageId"]) == (PHONE, AGENT, message_id)
    assert text["text"] == "hello"
    assert suggestion["suggestionResponse"] == {"postbackData": "yes_please", "text": "yes_please", "type": "REPLY"}
    assert location["location"] == {"latitude": 51.5, "longitude": -0.12}
    for event, event_id, event_type in zip(
        (typing, subscribe, unsubscribe), ids[3:], ("IS_TYPING", "SUBSCRIBE", "UNSUBSCRIBE"), strict=True
    ):
        assert set(event) == USER_EVENT_FIELDS
        assert (event["eventType"], event["eventId"], event["senderPhoneNumber"]) == (event_type, event_id, PHONE)
    with pytest.raises(ValueError):
        sim.user_writes(PHONE, text="a", location=(0, 0))


# Webhook delivery


def test_webhooks_are_retried_with_backoff_until_200(sim, receiver):
    receiver.script.extend([503, 503, 500])
    sim.user_typing(PHONE)
    assert sim.wait_idle(5)
    [record] = sim.webhooks
    assert (record["statuses"], record["attempts"], record["delivered"], record["gave_up"]) == (
        [503, 503, 500, 200],
        4,
        True,
        False,
    )
    times = [t for t, _, _ in receiver.posts]
    assert len({body for _, _, body in receiver.posts}) == 1  # the same envelope each time
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= expected * 0.9 for gap, expected in zip(gaps, [0.05, 0.1, 0.2], strict=True))


def test_webhooks_are_given_up_after_max_age(make, receiver):
    receiver.default = 503
    sim = make(max_age=0.3)
    sim.subscribe(PHONE)
    assert len(sim.pending_webhooks()) == 1
    assert sim.wait_idle(5) and sim.pending_webhooks() == []
    [record] = sim.webhooks
    assert record["gave_up"] and not record["delivered"] and record["attempts"] >= 2


def test_an_unreachable_webhook_is_retried(make, receiver):
    receiver.close()
    sim = make(url=receiver.url, max_age=0.2)
    sim.user_typing(PHONE)
    assert sim.wait_idle(5)
    assert set(sim.webhooks[0]["statuses"]) == {None}


def test_duplicate_all_delivers_every_webhook_twice(make, receiver):
    sim = make(duplicate_all=True)
    typing, subscribe = sim.user_typing(PHONE), sim.subscribe(PHONE)
    assert sim.wait_idle(5)
    assert [e["eventId"] for e in receiver.all_events()] == [typing, typing, subscribe, subscribe]
    assert [w["duplicate"] for w in sim.webhooks] == [False, True, False, True]
    assert receiver.posts[0][2] == receiver.posts[1][2]  # a redelivery: same envelope, same messageId


def test_shuffle_delivers_out_of_order_repeatably(make, receiver):
    def run(seed):
        receiver.posts.clear()
        sim = make(shuffle=True, seed=seed, shuffle_window=4, shuffle_hold=0.1)
        sent = [sim.user_typing(PHONE) for _ in range(9)]  # two full windows, one left for the timer
        assert sim.wait_idle(5)
        received = [e["eventId"] for e in receiver.all_events()]
        assert sorted(received) == sorted(sent)
        return [sent.index(event_id) for event_id in received]

    order = run(1)
    assert order != sorted(order) and order[-1] == 8
    assert run(1) == order


def test_handshake(make, receiver):
    assert make().register_webhook() is True
    assert make(token="someone-else").register_webhook() is False
    receiver.close()
    assert make().register_webhook() is False


def test_fake_rbm_controls_still_work(sim):
    sim.fail_share("create", 1.0)
    assert create(sim)[1] == 500
    sim.fail_share("create", 0.0)
    message_id, _ = create(sim)
    sim.script("revoke", message_id, [503])
    assert [revoke(sim, message_id), revoke(sim, message_id)] == [503, 200]
    assert sim.count("revoke", message_id=message_id) == 2


def test_a_reused_message_id_is_409_already_exists_and_delivered_once(sim, receiver):
    sim.add_device(PHONE, "online")
    message_id, _ = create(sim)
    response = requests.post(
        f"{sim.url}/v1/phones/%2B15550000001/agentMessages",
        params={"messageId": message_id, "agentId": AGENT},
        json={"contentMessage": {"text": "hi"}},
        timeout=5,
    )
    assert response.status_code == 409 and response.json()["error"]["status"] == "ALREADY_EXISTS"
    assert [e["messageId"] for e in receiver.events(1)] == [message_id]
    assert_quiet(receiver, 1)


def test_a_create_dropped_after_it_was_accepted_is_delivered_once(sim, receiver):
    sim.add_device(PHONE, "online")
    sim.drop("create", PHONE)
    with pytest.raises(requests.ConnectionError):
        create(sim, message_id="m1")
    assert create(sim, message_id="m1") == ("m1", 409)  # the caller's retry
    assert [e["messageId"] for e in receiver.events(1)] == ["m1"]
    assert_quiet(receiver, 1)


def test_a_pool_of_senders_delivers_everything_and_stop_ends_every_thread(receiver):
    with Simulator(receiver.url, TOKEN, senders=3) as sim:
        sent = {sim.user_typing(PHONE) for _ in range(12)}
        assert sim.wait_idle(5)
        assert {e["eventId"] for e in receiver.all_events()} == sent
    assert not [t for t in threading.enumerate() if t.name.startswith("rbm-")]


# Command line


def run_cli(receiver, *args, token=TOKEN):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local.simulator",
            "--webhook-url",
            receiver.url,
            "--client-token",
            token,
            "--retry-base",
            "0.05",
            *args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_command_line_serves_devices_and_sends_user_webhooks(receiver):
    process = run_cli(
        receiver,
        "--register",
        "--device",
        f"{PHONE}:online",
        "--device",
        "+15550000002:not_rcs",
        "--user-writes",
        PHONE,
        "hello",
    )
    try:
        url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert receiver.events(1)[0]["text"] == "hello"
        message_id, status = create(url)
        delivered = receiver.events(2)[1]
        assert status == 200 and (delivered["eventType"], delivered["messageId"]) == ("DELIVERED", message_id)
        assert create(url, phone="+15550000002")[1] == 404
    finally:
        process.terminate()
        process.wait(5)


def test_command_line_once_sends_and_exits(receiver):
    process = run_cli(receiver, "--once", "--subscribe", PHONE, "--user-typing", PHONE)
    assert process.wait(10) == 0
    assert [e["eventType"] for e in receiver.all_events()] == ["IS_TYPING", "SUBSCRIBE"]


def test_command_line_fails_a_bad_handshake(receiver):
    process = run_cli(receiver, "--register", "--once", token="wrong")
    assert process.wait(10) == 1
    assert "FAILED" in process.stderr.read()
