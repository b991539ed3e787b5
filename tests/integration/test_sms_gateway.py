"""send_fallbacks as a real process over the Firestore emulator, against the fake
signed gateway (README, "The signed gateway's contract"): each ambiguous failure,
with the gateway declared idempotent or not, and the SMS sent before the failure or
not — the user gets exactly one SMS from an idempotent gateway and at most one
otherwise, and the fallback ends UNKNOWN only when it may have gone out and no
more tries are allowed; settings the gateway cannot be used with answer 503."""

import json

import pytest
import requests

from functions import store
from functions.model import Fallback
from local.fake_sms import FakeSmsWebhook
from tests.support import SWEEP_ENV, sms_due, store_message, wait_for

SECRET = "gateway-secret"
# Each way a send can leave open whether the SMS went out; "interrupted": the sweep
# died mid-send, so its lease ran out in SENDING.
FAILURES = [500, 502, 504, "reset", "close", "timeout", "interrupted"]
CASES = [(failure, sends) for failure in FAILURES for sends in (True, False)]


@pytest.fixture
def gateway():
    with FakeSmsWebhook(secret=SECRET) as fake:
        yield fake


def gateway_env(gateway, idempotent: bool, **extra) -> dict:
    return {
        **SWEEP_ENV,
        "SMS_PROVIDER": "webhook",
        "SMS_WEBHOOK_URL": gateway.url + "/send",
        "SMS_WEBHOOK_SECRET": SECRET,
        "SMS_WEBHOOK_IDEMPOTENT": "true" if idempotent else "false",
        **extra,
    }


def phone(i: int) -> str:
    return f"+4477009{i:05d}"


def seed(i: int, fallback: Fallback = Fallback.DUE, attempts: int = 0) -> str:
    """A revoked message whose SMS is due now, or (SENDING) whose send's lease just ran out."""
    return store_message(
        sms_due(f"msg-gw-{i:03d}", phone(i), f"your code is {i}", fallback, fallback_attempts=attempts)
    )


def reach_gateway(gateway, message_id: str, to: str) -> None:
    """What an interrupted attempt left at the gateway: a request under the message's key, sent."""
    body = json.dumps({"to": to, "text": "your code", "message_id": message_id}).encode()
    headers = {"Idempotency-Key": message_id, "X-Signature": gateway.signature(body, message_id)}
    assert requests.post(gateway.url + "/send", data=body, headers=headers, timeout=5).status_code == 200


def sweep(process) -> dict:
    response = requests.post(process.url, json={}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def settled(process, message_ids) -> bool:
    sweep(process)
    return all(store.get_message(i).fallback not in (Fallback.DUE, Fallback.SENDING) for i in message_ids)


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "undeclared"])
def test_each_ambiguous_failure_gives_one_sms_from_an_idempotent_gateway_and_at_most_one_otherwise(
    functions, firestore, gateway, idempotent
):
    cases = {}
    for i, (failure, sends) in enumerate(CASES):
        if failure == "interrupted":
            message_id = seed(i, Fallback.SENDING, attempts=1)
            if sends:
                reach_gateway(gateway, message_id, phone(i))
        else:
            message_id = seed(i)
            gateway.script_failure(phone(i), failure, sends=sends)
        cases[message_id] = (phone(i), failure, sends)
    process = functions("send_fallbacks", env=gateway_env(gateway, idempotent))
    wait_for(lambda: settled(process, cases), timeout=150, interval=0.3)  # a read timeout is 15 s
    table = []
    for message_id, (to, failure, sends) in cases.items():
        after, texts = store.get_message(message_id), gateway.count(to=to)
        table.append(
            f"{'idempotent' if idempotent else 'undeclared'} | {failure} | {sends} | {texts} | {after.fallback}"
        )
        if idempotent:
            [sms] = [s for s in gateway.sent if s["to"] == to]  # exactly one SMS, whatever happened
            assert (after.fallback, after.sms_id, after.fallback_attempts) == (Fallback.SENT, sms["provider_id"], 2)
        else:
            assert (texts, after.fallback, after.sms_id) == (int(sends), Fallback.UNKNOWN, None)  # at most one
        assert after.fallback_uncertain
    print("\n".join(["mode | failure | gateway sent it | SMS sent | final fallback", *table]))
    if idempotent:  # each retry reached the gateway signed anew, and what was sent was answered from its record
        assert gateway.replayed == sum(sends for _, _, sends in cases.values())


@pytest.mark.parametrize(
    "answers, final, texts",
    [
        ([(502, False)] * 3, Fallback.UNKNOWN, 0),  # may have sent each time: UNKNOWN once attempts run out
        ([(502, False), (503, False), (503, False)], Fallback.UNKNOWN, 0),  # a later clear "not sent" can't undo it
        ([(503, False)] * 3, Fallback.FAILED, 0),  # surely never sent: FAILED
        ([(502, False), ("reset", False), (200, True)], Fallback.SENT, 1),
    ],
    ids=["ambiguous", "ambiguous-then-clear", "clear", "third-try"],
)
def test_an_idempotent_gateway_is_retried_until_attempts_run_out(functions, firestore, gateway, answers, final, texts):
    message_id = seed(0)
    for failure, sends in answers:
        if failure != 200:
            gateway.script_failure(phone(0), failure, sends=sends)
    process = functions("send_fallbacks", env=gateway_env(gateway, True, FALLBACK_MAX_ATTEMPTS="3"))
    wait_for(lambda: settled(process, [message_id]), timeout=60, interval=0.3)
    after = store.get_message(message_id)
    assert (after.fallback, after.fallback_attempts, gateway.count()) == (final, 3, texts)
    assert gateway.received == 3
    if final is not Fallback.SENT:
        assert after.last_error.startswith("gave up after 3 attempts")


@pytest.mark.parametrize(
    "settings, reason",
    [
        (
            {"SMS_WEBHOOK_URL": "http://sms.example.com/send"},
            "SMS_WEBHOOK_URL must be an https:// URL (http:// only to a loopback address)",
        ),
        ({"SMS_WEBHOOK_SECRET": ""}, "SMS_WEBHOOK_SECRET is empty"),
    ],
    ids=["plain-http", "empty-secret"],
)
def test_a_gateway_the_relay_may_not_sign_for_is_refused_with_503(functions, firestore, gateway, settings, reason):
    message_id = seed(0)
    process = functions("send_fallbacks", env=gateway_env(gateway, True, **settings))
    response = requests.post(process.url, json={}, timeout=30)
    assert response.status_code == 503
    assert response.json() == {"error": f"SMS provider misconfigured: {reason}"}
    assert store.get_message(message_id).fallback is Fallback.DUE and gateway.received == 0
    [logged] = [json.loads(line) for line in process.read_log().splitlines() if '"sms_unconfigured"' in line]
    assert logged["severity"] == "ERROR" and reason in logged["message"] and SECRET not in process.read_log()
