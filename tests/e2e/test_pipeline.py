"""The whole loop through real processes: simulator → webhook → Pub/Sub → subscribers
→ Firestore ← send_message / sweeps → simulator and SMS fake. Each fault test
counts what was lost and what was duplicated: both must be zero."""

import base64
import itertools
import json
import random
import time

import requests

from functions import conversations
from functions.signature import sign
from local import demo
from local.processes import PROJECT, create_pull_subscription, free_port, pull_all
from local.stack import AGENT, CLIENT_TOKEN, QUEUES, TOPOLOGY
from tests.support import wait_for

DEADLINE = 10  # the shortest deadline send_message accepts
phones = itertools.count(0, 100)


def run_population(stack, kinds=tuple(demo.KINDS), population=12, timeout=60):
    planned = demo.plan(population, kinds, first_phone=next(phones))
    demo.launch(stack, planned, DEADLINE)
    docs = demo.watch(stack, planned, timeout)
    return planned, docs


def test_full_loop_every_message_meets_its_fate_with_one_sms_where_due(stack, simulator):
    before = {key: len(stack.tasks.dispatches(queue)) for key, queue in QUEUES.items()}
    planned, docs = run_population(stack)
    assert demo.problems(stack, planned, docs) == []
    # The due work came on tasks: revokes on rbm-calls, each SMS sent on sms-sends.
    delivered = {key: stack.tasks.dispatches(queue)[before[key] :] for key, queue in QUEUES.items()}
    texted = sum(m.sms_id is not None for m in docs.values() if m)
    assert texted and sum(d["status"] == 200 for d in delivered["sms"]) >= texted
    assert any(d["status"] == 200 for d in delivered["rbm"])
    for p in planned:
        m = docs[p.message_id]
        if p.kind == "urgent":  # revoke failed: SMS at the deadline, RCS arrived later anyway
            assert m.fallback_sent_at < m.delivered_at
        if p.kind in ("online", "late"):  # delivered before the deadline: no SMS, never
            assert m.delivered_at < m.revoke_at and m.sms_id is None


def test_every_webhook_twice_and_out_of_order(stack, simulator):
    simulator.duplicate_all = simulator.shuffle = True
    planned, docs = run_population(stack, kinds=("online", "late", "never"), population=9)
    assert demo.problems(stack, planned, docs) == []  # no lost fate, no second SMS
    for p in planned:
        applied = docs[p.message_id].applied
        assert len(applied) == len(set(applied))


def test_revokes_failing_three_times_in_ten(stack, simulator):
    simulator.fail_share("revoke", 0.3, seed=7)
    planned, docs = run_population(stack, kinds=("never",), population=6)
    assert demo.problems(stack, planned, docs) == []
    assert any(r["status"] == 500 for r in simulator.requests if r["kind"] == "revoke")


def test_sms_provider_failing_a_third_of_the_time(stack, simulator):
    stack.sms.fail_share(0.34, seed=3)
    planned, docs = run_population(stack, kinds=("never", "not_rcs"), population=8)
    assert demo.problems(stack, planned, docs) == []  # each exactly one SMS


def conversation_messages(phone):
    return list(conversations.refs(AGENT, phone)[0].collection("messages").stream())


def test_a_subscriber_killed_and_restarted_mid_stream_loses_nothing(stack, simulator):
    phone = f"+1666{next(phones):07d}"
    inbound = stack.functions["record_inbound"]
    for i in range(30):
        simulator.user_writes(phone, text=f"message {i}")
        if i == 10:
            inbound.kill()
        if i == 20:
            inbound.start()
        time.sleep(0.05)
    stored = wait_for(lambda: len(conversation_messages(phone)) == 30, timeout=60)
    assert stored  # lost: 0; duplicates are impossible: one document per messageId


def test_webhook_503_while_pubsub_is_unreachable_then_everything_comes_in(stack, simulator):
    phone = f"+1777{next(phones):07d}"
    webhook = stack.functions["receive_webhook"]
    reachable = webhook.env["PUBSUB_EMULATOR_HOST"]
    webhook.env.update(PUBSUB_EMULATOR_HOST=f"127.0.0.1:{free_port()}", PUBLISH_TIMEOUT_SECONDS="0.5")
    webhook.restart()
    try:
        for i in range(10):
            simulator.user_writes(phone, text=f"during the outage {i}")
        wait_for(
            lambda: (
                sum(503 in r["statuses"] for r in simulator.webhooks if r["event"].get("senderPhoneNumber") == phone)
                == 10
            )
        )
    finally:
        webhook.env.update(PUBSUB_EMULATOR_HOST=reachable, PUBLISH_TIMEOUT_SECONDS="5")
        webhook.restart()
    assert simulator.wait_idle(30)
    assert wait_for(lambda: len(conversation_messages(phone)) == 10, timeout=60)  # lost: 0


def mutations(rng: random.Random, body: dict, signature: str):
    """Valid signed requests, broken in one signed or structural place each."""
    data = body["message"]["data"]
    for _ in range(60):
        choice = rng.randrange(5)
        mutated, headers = json.loads(json.dumps(body)), {"X-Goog-Signature": signature}
        if choice == 0:  # a character of the base64 data
            i = rng.randrange(len(data))
            new = data[:i] + rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/") + data[i + 1 :]
            try:
                if base64.b64decode(new, validate=True) == base64.b64decode(data):
                    continue  # same bytes: still validly signed
            except ValueError:
                pass
            mutated["message"]["data"] = new
        elif choice == 1:  # a character of the signature
            i = rng.randrange(len(signature))
            headers["X-Goog-Signature"] = signature[:i] + ("A" if signature[i] != "A" else "B") + signature[i + 1 :]
        elif choice == 2:  # the event re-encoded with a change, old signature
            event = json.loads(base64.b64decode(data))
            event[rng.choice(list(event))] = rng.choice([None, 1, "x", [], {}])
            mutated["message"]["data"] = base64.b64encode(json.dumps(event).encode()).decode()
        elif choice == 3:  # structure
            mutated = rng.choice([{}, {"message": None}, {"message": {"data": None}}, [mutated], "text"])
        else:  # truncated bytes on the wire
            raw = json.dumps(body).encode()
            yield raw[: rng.randrange(1, len(raw))], headers
            continue
        yield json.dumps(mutated).encode(), headers


def test_fuzzed_signed_requests_get_4xx_and_publish_nothing(stack, simulator):
    create_pull_subscription(PROJECT, TOPOLOGY["events_topic"], "fuzz-watch")
    event = {
        "senderPhoneNumber": "+15550009999",
        "eventType": "DELIVERED",
        "eventId": "fuzz",
        "messageId": "fuzz-m",
        "agentId": AGENT,
        "sendTime": "2026-01-01T00:00:00Z",
    }
    data = json.dumps(event).encode()
    body = {
        "message": {"data": base64.b64encode(data).decode(), "messageId": "1", "publishTime": "2026-01-01T00:00:00Z"},
        "subscription": "projects/rbm-partner/subscriptions/rbm-agent",
    }
    url = stack.functions["receive_webhook"].url
    statuses = [
        requests.post(url, data=raw, headers=headers, timeout=10).status_code
        for raw, headers in mutations(random.Random(11), body, sign(CLIENT_TOKEN, data))
    ]
    assert statuses and all(400 <= s < 500 for s in statuses), statuses
    assert pull_all(PROJECT, "fuzz-watch", wait_seconds=2) == []


def test_no_phone_number_or_secret_in_any_log_line_of_the_run(stack, simulator):
    """Every kind of user, failing revokes and a failing SMS provider, then every
    function's log of the run (this test's, and any that ran before it)."""
    from local.stack import TWILIO_TOKEN

    simulator.fail_share("revoke", 0.3, seed=5)
    stack.sms.fail_share(0.34, seed=5)
    # Not "urgent": with SMS retries its late DELIVERED may rightly cancel the SMS.
    planned, docs = run_population(stack, kinds=tuple(k for k in demo.KINDS if k != "urgent"), population=12)
    assert demo.problems(stack, planned, docs) == []
    # And a batch, so send_batch has a log too, and its numbers are looked for in every log.
    batched = [f"+1667{next(phones):07d}" for _ in range(2)]
    body = {"messages": [{"phone": p, "content": {"text": "hi"}} for p in batched]}
    assert stack.send_batch(body).status_code == 202
    wait_for(lambda: {r["phone"] for r in stack.rbm.requests if r["kind"] == "create"} >= set(batched), timeout=60)
    logs = {name: process.read_log() for name, process in stack.functions.items()}
    assert all(logs.values()), [name for name, text in logs.items() if not text]
    numbers = {
        record["event"].get("senderPhoneNumber") or record["event"].get("phoneNumber") for record in stack.rbm.webhooks
    }
    numbers |= {record["to"] for record in stack.sms.sent} | set(batched)
    numbers.discard(None)
    assert len(numbers) >= 12
    for name, text in logs.items():
        for secret in [CLIENT_TOKEN, TWILIO_TOKEN, *numbers, *(p.lstrip("+") for p in numbers)]:
            assert secret not in text, f"{secret!r} in the log of {name}"
