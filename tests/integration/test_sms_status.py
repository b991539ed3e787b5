"""receive_sms_status as a real process over the Firestore emulator, fed by the fake
Twilio's signed status callbacks (and the signed gateway's, signed here as the README's
contract says): callbacks twice, reversed, for unknown messages, badly signed; the SMS
leg's status never goes back; and a send that crashed between the provider's answer
and our commit is settled SENT by the callback that arrives first."""

import hashlib
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
import requests

from functions import store
from functions.model import Fallback, SmsStatus
from local.fake_sms import twilio_signature
from local.processes import free_port
from tests.support import SWEEP_ENV, sms_due, store_message, wait_for

PHONE = "+447700900123"
GATEWAY_SECRET = "gateway-secret"


@pytest.fixture
def status(functions, firestore, sms_env):
    """receive_sms_status on a port it knows, so its SMS_STATUS_CALLBACK_URL is its own URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**sms_env, "SMS_STATUS_CALLBACK_URL": url, "SMS_WEBHOOK_SECRET": GATEWAY_SECRET}
    return functions("receive_sms_status", env=env, port=port)


@pytest.fixture
def fallbacks(functions, firestore, sms_env, status):
    return functions("send_fallbacks", env={**sms_env, **SWEEP_ENV, "SMS_STATUS_CALLBACK_URL": status.url})


def seed(message_id="msg-1", fallback=Fallback.DUE, **fields) -> str:
    return store_message(sms_due(message_id, PHONE, "your code is 1234", fallback, **fields))


def sweep(process) -> dict:
    response = requests.post(process.url, json={}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def twilio_callback(status_process, fields: dict, message_id="msg-1", token="twilio-secret", signature=None):
    """A status callback posted as Twilio posts it: form-encoded, X-Twilio-Signature over URL + fields."""
    url = f"{status_process.url}?{urlencode({'message_id': message_id})}"
    headers = {"X-Twilio-Signature": signature or twilio_signature(token, url, fields)}
    return requests.post(url, data=fields, headers=headers, timeout=30)


def gateway_callback(status_process, payload: dict, secret=GATEWAY_SECRET, t=None):
    """The signed gateway's callback, signed as the README's contract says."""
    body = json.dumps(payload).encode()
    t = int(time.time()) if t is None else t
    signed = f"v1:{t}:{payload.get('message_id', '')}:".encode() + body
    signature = f"t={t},v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Signature": signature}
    return requests.post(status_process.url, data=body, headers=headers, timeout=30)


def test_callbacks_twice_and_reversed_end_delivered_and_never_go_back(status, fallbacks, twilio):
    message_id = seed()
    twilio.script_statuses(PHONE, [("queued", None), ("sent", None), ("delivered", None)], duplicate=True, reverse=True)
    assert sweep(fallbacks)["sent"] == 1
    assert twilio.wait_callbacks(6)
    assert {c["answered"] for c in twilio.callbacks} == {200}
    m = store.get_message(message_id)
    sid = twilio.sent[0]["provider_id"]
    assert twilio.sent[0]["fields"]["StatusCallback"].endswith(f"?message_id={message_id}")
    assert (m.fallback, m.sms_id, m.sms_status, m.sms_error_code) == (Fallback.SENT, sid, SmsStatus.DELIVERED, None)
    assert m.sms_status_at is not None
    # A late, duplicated `sent` after `delivered` changes nothing.
    late = twilio_callback(status, {"MessageSid": sid, "MessageStatus": "sent"}, message_id)
    assert late.status_code == 200 and store.get_message(message_id) == m


@pytest.mark.parametrize(
    "final, code",
    [
        ("undelivered", "30003"),
        ("undelivered", "30005"),
        ("undelivered", "30006"),
        ("undelivered", "30007"),
        ("failed", "30008"),
    ],
)
def test_an_sms_that_never_reached_the_handset_says_so_with_its_code(fallbacks, twilio, final, code):
    message_id = seed()
    twilio.script_statuses(PHONE, [("sent", None), (final, code)])
    assert sweep(fallbacks)["sent"] == 1
    assert twilio.wait_callbacks(2)
    m = store.get_message(message_id)
    assert (m.fallback, m.sms_status, m.sms_error_code) == (Fallback.SENT, SmsStatus(final.upper()), code)


def test_a_callback_for_a_message_we_do_not_have_is_ignored_and_stores_nothing(status):
    response = twilio_callback(status, {"MessageSid": "SM1", "MessageStatus": "delivered"}, "never-sent")
    assert (response.status_code, response.json()) == (200, {"ignored": "unknown message"})
    assert store.get_message("never-sent") is None
    assert '"event": "sms_status_unknown"' in status.read_log()


@pytest.mark.parametrize(
    "post, expected",
    [
        (
            lambda s: requests.post(
                s.url + "?message_id=msg-1", data={"MessageSid": "SM1", "MessageStatus": "delivered"}
            ),
            401,
        ),
        (lambda s: twilio_callback(s, {"MessageSid": "SM1", "MessageStatus": "delivered"}, signature="AAAA"), 401),
        (lambda s: twilio_callback(s, {"MessageSid": "SM1", "MessageStatus": "delivered"}, token="another"), 401),
        (lambda s: gateway_callback(s, {"message_id": "msg-1", "id": "g1", "status": "delivered"}, secret="x"), 401),
        (lambda s: gateway_callback(s, {"message_id": "msg-1", "id": "g1", "status": "delivered"}, t=1), 401),
        (lambda s: twilio_callback(s, {"MessageSid": "SM1", "MessageStatus": "teleported"}), 400),
        (lambda s: gateway_callback(s, {"message_id": "msg-1", "status": "delivered"}), 400),
        (lambda s: requests.get(s.url), 405),
    ],
    ids=["unsigned", "wrong", "other-token", "gateway-wrong", "gateway-stale", "bad-status", "gateway-no-id", "GET"],
)
def test_bad_callbacks_are_refused_with_json_and_store_nothing(status, post, expected):
    message_id = seed(fallback=Fallback.UNKNOWN, fallback_uncertain=True)
    before = store.messages().document(message_id).get()
    response = post(status)
    assert response.status_code == expected and "error" in response.json()
    after = store.messages().document(message_id).get()
    assert after.update_time == before.update_time


def test_a_gateway_callback_settles_an_unknown_send(status):
    message_id = seed(fallback=Fallback.UNKNOWN, fallback_uncertain=True)
    response = gateway_callback(
        status, {"message_id": message_id, "id": "g-7", "status": "undelivered", "error_code": "30006"}
    )
    assert response.status_code == 200, response.text
    m = store.get_message(message_id)
    assert (m.fallback, m.sms_id, m.sms_status, m.sms_error_code) == (
        Fallback.SENT,
        "g-7",
        SmsStatus.UNDELIVERED,
        "30006",
    )
    assert '"event": "fallback_confirmed"' in status.read_log()


def test_a_crash_between_the_answer_and_our_commit_is_settled_by_the_callback_that_arrives_first(
    functions, sms_env, status, twilio
):
    message_id = seed()
    sender = functions("send_fallbacks", env={**sms_env, **SWEEP_ENV, "SMS_STATUS_CALLBACK_URL": status.url})
    twilio.hold()  # Twilio created the SMS; its answer is held, and the callbacks come first
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(requests.post, sender.url, json={}, timeout=120)
        assert twilio.wait_sent(1, timeout=30) and twilio.wait_callbacks(2)
        sender.kill()  # the instance dies before it records the answer
        twilio.release()
        assert isinstance(held.exception(timeout=30), requests.ConnectionError)
    m = store.get_message(message_id)
    assert (m.fallback, m.sms_id, m.sms_status) == (Fallback.SENT, twilio.sent[0]["provider_id"], SmsStatus.DELIVERED)
    assert (m.fallback_at, m.lease_owner) == (None, None)
    time.sleep(2.1)  # past the dead sweep's lease: nothing is due, nothing reported UNKNOWN
    after = functions("send_fallbacks", env={**sms_env, **SWEEP_ENV, "SMS_STATUS_CALLBACK_URL": status.url})
    assert sweep(after)["scanned"] == 0
    assert twilio.count(to=PHONE) == 1 and store.get_message(message_id).fallback is Fallback.SENT


def test_an_ambiguous_500_then_its_callbacks_end_sent_whichever_lands_first(fallbacks, twilio):
    message_id = seed()
    twilio.script([500])  # Twilio created the SMS, then answered 500
    sweep(fallbacks)
    assert twilio.wait_callbacks(2)
    m = wait_for(lambda: (m := store.get_message(message_id)).fallback is Fallback.SENT and m)
    assert (m.sms_id, m.sms_status) == (twilio.sent[0]["provider_id"], SmsStatus.DELIVERED)
    assert twilio.count(to=PHONE) == 1


def test_firestore_unavailable_answers_503(status, firestore_outage):
    message_id = seed(fallback=Fallback.UNKNOWN, fallback_uncertain=True)
    with firestore_outage():
        response = twilio_callback(status, {"MessageSid": "SM1", "MessageStatus": "delivered"}, message_id)
    assert response.status_code == 503 and "error" in response.json()
