"""No phone number and no secret in any log line, whatever RBM and the SMS
providers answer (DESIGN §3.7): every documented error of RBM's create and
revoke and of both SMS providers, through real function processes, then every
line of every function's log read."""

import re

import requests

from functions.model import Fallback, State
from local.fake_sms import FakeSmsWebhook
from tests.integration.test_sweeps import get, phone, queue, seed, sweep
from tests.support import SWEEP_ENV, wait_for

GATEWAY_SECRET = "gateway-secret-7f3a"
RBM_ANSWERS = [400, 403, 404, 409, 429, 500, 502, 503, 504]  # each a create's answer, repeated
REVOKE_ANSWERS = [404, 429, 500, 502, 503, 504]  # each a revoke's answer, repeated
SMS_ANSWERS = [400, 401, 403, 404, 429, 500, 502, 503, 504]


def national(number: str) -> str:
    """The digits a log line could hold a number by: without + and country code."""
    return number[3:]


def test_every_error_path_logs_no_phone_number_or_secret(functions, firestore, rbm, twilio, sms_env):
    env = {**SWEEP_ENV, "RBM_API_ENDPOINT": rbm.url, "REVOKE_MAX_ATTEMPTS": "2", "FALLBACK_MAX_ATTEMPTS": "2"}
    sender = functions("send_message", env=env)
    for i, status in enumerate(RBM_ANSWERS, start=100):
        rbm.script("create", phone(i), [status] * 20, retry_after="1")
        answer = requests.post(
            sender.url,
            json={
                "phone": phone(i),
                "content": {"text": f"call {phone(i)}"},
                "fallback": {"text": f"code for {phone(i)}"},
            },
            timeout=90,
        )
        assert answer.status_code in (200, 422, 503), answer.text
    rbm.drop("create", phone(120))
    requests.post(sender.url, json={"phone": phone(120), "content": {"text": "dropped"}}, timeout=90)

    revoked = seed(len(REVOKE_ANSWERS) + 1, time_sensitive=True, start=200)
    for i, (message_id, status) in enumerate(zip(revoked, REVOKE_ANSWERS, strict=False), start=200):
        queue(rbm, message_id, i)
        rbm.script("revoke", message_id, [status] * 20, retry_after="1")
    queue(rbm, revoked[-1], 200 + len(REVOKE_ANSWERS))
    rbm.drop("revoke", revoked[-1], times=20)
    revoker = functions("revoke_expired", env=env)
    wait_for(
        lambda: sweep(revoker) and all(m.next_action_at is None for m in map(get, revoked)), timeout=60, interval=0.5
    )

    twilio.script(SMS_ANSWERS)
    texting = functions("send_fallbacks", env={**env, **sms_env})
    due = seed(len(SMS_ANSWERS) + 1, state=State.REVOKED, fallback=Fallback.DUE, start=300)
    wait_for(lambda: sweep(texting) and all(get(i).fallback is not Fallback.DUE for i in due), timeout=60, interval=0.5)
    twilio.drop(reset=False)
    seed(1, state=State.REVOKED, fallback=Fallback.DUE, start=400)
    sweep(texting)
    with FakeSmsWebhook(secret=GATEWAY_SECRET) as gateway:
        gateway.script(SMS_ANSWERS)
        webhook_env = {
            **env,
            "SMS_PROVIDER": "webhook",
            "SMS_WEBHOOK_URL": gateway.url,
            "SMS_WEBHOOK_SECRET": GATEWAY_SECRET,
        }
        texting_by_webhook = functions("send_fallbacks", env=webhook_env)
        due = seed(len(SMS_ANSWERS), state=State.REVOKED, fallback=Fallback.DUE, start=500)
        wait_for(
            lambda: sweep(texting_by_webhook) and all(get(i).fallback is not Fallback.DUE for i in due),
            timeout=60,
            interval=0.5,
        )

    logs = {p.target: p.read_log() for p in (sender, revoker, texting, texting_by_webhook)}
    numbers = [phone(i) for i in [*range(100, 121), *range(200, 210), *range(300, 311), 400, *range(500, 510)]]
    for name, text in logs.items():
        assert '"severity": "ERROR"' in text or name == "send_message", f"{name} met no error at all"
        for secret in ["twilio-secret", GATEWAY_SECRET, *numbers, *map(national, numbers)]:
            assert secret not in text, f"{secret!r} in the log of {name}"
        assert not re.search(r"<html|Traceback", text, re.IGNORECASE), f"an HTML page or a traceback in {name}'s log"
