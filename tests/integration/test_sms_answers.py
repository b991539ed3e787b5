"""send_fallbacks as a real process over the Firestore emulator, against the fake
Twilio answering as Twilio documents: what each answer or failure of the SMS
provider does to a fallback (README, "SMS providers' answers"), counted at the
provider, and no phone number in the function's log."""

import json
import re
import time

import pytest
import requests

from functions import store
from functions.model import Fallback
from tests.support import SWEEP_ENV, sms_due, store_message, wait_for

PHONE = "+447700900123"
# The number in any form a log line could hold it: E.164, or its national digits.
NUMBER_IN_LOG = re.compile(r"\+?44\s*7700\s*900\s*123|07700\s*900\s*123|7700900123")


@pytest.fixture
def fallbacks(functions, firestore, sms_env):
    return functions("send_fallbacks", env={**sms_env, **SWEEP_ENV})


def due_fallback(message_id="msg-sms-1") -> str:
    """A revoked message whose SMS is due now."""
    return store_message(sms_due(message_id, PHONE, "your code is 1234"))


def sweep(process) -> dict:
    response = requests.post(process.url, json={}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def log_lines(process) -> list[dict]:
    return [json.loads(line) for line in process.read_log().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "close"])
def test_twilio_dropping_the_connection_after_reading_is_found_in_its_list_and_never_texts_twice(
    fallbacks, twilio, reset
):
    message_id = due_fallback()
    twilio.drop(reset=reset)  # reads the whole POST, sends the SMS, answers nothing
    assert sweep(fallbacks)["retried"] == 1  # CHECKING: Twilio's Messages list will tell
    after = store.get_message(message_id)
    assert (after.fallback, after.sms_id, after.fallback_uncertain) == (Fallback.CHECKING, None, True)
    wait_for(lambda: sweep(fallbacks)["sent"] == 1, timeout=30, interval=0.3)  # after the settle delay
    after = store.get_message(message_id)
    assert (after.fallback, after.sms_id) == (Fallback.SENT, twilio.sent[0]["provider_id"])
    for _ in range(3):
        assert sweep(fallbacks)["scanned"] == 0
    assert twilio.received == 1 and twilio.count(to=PHONE) == 1  # one request, one SMS, ever
    reports = [line for line in log_lines(fallbacks) if line.get("event") == "sms_checking"]
    assert [r["severity"] for r in reports] == ["WARNING"] and reports[0]["message_id"] == message_id
    assert not NUMBER_IN_LOG.search(fallbacks.read_log())


def test_429_with_retry_after_delays_the_next_send_at_least_as_long(fallbacks, twilio):
    message_id = due_fallback()
    twilio.set_retry_after(6)  # far longer than the sweep's own backoff (0.2 s)
    twilio.script([429])
    assert sweep(fallbacks)["retried"] == 1
    deadline = time.monotonic() + 30
    while not twilio.sent and time.monotonic() < deadline:
        sweep(fallbacks)
        time.sleep(0.2)
    [sent] = twilio.sent
    [throttled, accepted] = twilio.received_at  # no call in between
    assert accepted - throttled >= 6 and sent["time"] >= accepted
    assert store.get_message(message_id).fallback is Fallback.SENT
    assert not NUMBER_IN_LOG.search(fallbacks.read_log())


def test_twilio_invalid_number_fails_with_its_code_and_the_number_stays_out_of_the_log(fallbacks, twilio):
    message_id = due_fallback()
    twilio.script([400])  # 21211, whose message names the number in full
    assert sweep(fallbacks)["failed"] == 1
    after = store.get_message(message_id)
    assert (after.fallback, after.last_error) == (Fallback.FAILED, "provider 400, code 21211")
    [report] = [line for line in log_lines(fallbacks) if line.get("event") == "sms_failed"]
    assert report["severity"] == "ERROR" and "21211" in report["error"]
    assert twilio.count() == 0 and not NUMBER_IN_LOG.search(fallbacks.read_log())
