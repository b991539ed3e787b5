"""send_fallbacks as a real process over the Firestore emulator, against the fake
Twilio: an ambiguous create is reconciled through Twilio's Messages list (README,
"Reconciling an ambiguous Twilio send"). Each ambiguous failure, with the SMS sent
before it or not: found → SENT with its sid; proven absent → sent once more; either
way exactly one SMS. A list that cannot be read until the attempts run out → UNKNOWN,
at most one SMS."""

import pytest
import requests

from functions import store
from functions.model import Fallback
from local.fake_sms import CLOSE_AFTER_READ, RESET_AFTER_READ
from tests.support import SWEEP_ENV, sms_due, store_message, wait_for

FAILURES = [500, 502, 504, RESET_AFTER_READ, CLOSE_AFTER_READ]
CASES = [(failure, sends) for failure in FAILURES for sends in (True, False)]


def phone(i: int) -> str:
    return f"+4477008{i:05d}"


def seed(i: int) -> str:
    return store_message(sms_due(f"msg-tw-{i:03d}", phone(i), f"your code is {i}"))


def settled(process, message_ids) -> bool:
    response = requests.post(process.url, json={}, timeout=120)
    assert response.status_code == 200, response.text
    pending = (Fallback.DUE, Fallback.SENDING, Fallback.CHECKING)
    return all(store.get_message(i).fallback not in pending for i in message_ids)


def test_each_ambiguous_twilio_failure_gives_exactly_one_sms(functions, firestore, twilio, sms_env):
    cases = {}
    for i, (failure, sends) in enumerate(CASES):
        twilio.script_failure(phone(i), failure, sends=sends)
        cases[seed(i)] = (phone(i), failure, sends)
    process = functions("send_fallbacks", env={**sms_env, **SWEEP_ENV})
    wait_for(lambda: settled(process, cases), timeout=90, interval=0.3)
    table = []
    for message_id, (to, failure, sends) in cases.items():
        after = store.get_message(message_id)
        [sms] = [s for s in twilio.sent if s["to"] == to]  # exactly one SMS, whatever happened
        table.append(f"twilio | {failure} | {sends} | 1 | {after.fallback} | {after.fallback_attempts}")
        # Found: one send and one lookup. Absent: a send, a lookup, a second send.
        assert (after.fallback, after.sms_id, after.fallback_attempts) == (
            Fallback.SENT,
            sms["provider_id"],
            2 if sends else 3,
        )
    print("\n".join(["provider | failure | Twilio sent it | SMS sent | final fallback | attempts", *table]))


def test_a_list_that_cannot_be_read_ends_unknown_after_the_attempts_and_never_texts_twice(
    functions, firestore, twilio, sms_env
):
    message_id = seed(0)
    twilio.script_failure(phone(0), 500, sends=True)
    twilio.script_lookups([500] * 10)
    process = functions("send_fallbacks", env={**sms_env, **SWEEP_ENV, "FALLBACK_MAX_ATTEMPTS": "3"})
    wait_for(lambda: settled(process, [message_id]), timeout=60, interval=0.3)
    after = store.get_message(message_id)
    assert (after.fallback, after.fallback_attempts, twilio.count()) == (Fallback.UNKNOWN, 3, 1)
    assert after.last_error.startswith("gave up after 3 attempts: lookup answered 500")


@pytest.mark.parametrize("found", [True, False], ids=["found", "absent"])
def test_a_lookup_that_fails_once_is_tried_again(functions, firestore, twilio, sms_env, found):
    message_id = seed(0)
    twilio.script_failure(phone(0), 502, sends=found)
    twilio.script_lookups([503])
    process = functions("send_fallbacks", env={**sms_env, **SWEEP_ENV})
    wait_for(lambda: settled(process, [message_id]), timeout=60, interval=0.3)
    after = store.get_message(message_id)
    assert (after.fallback, twilio.count()) == (Fallback.SENT, 1)
    assert twilio.received == (1 if found else 2)
