"""The local fakes speak the real wire formats and obey their controls.

Each test runs a fake on loopback and talks to it over HTTP, as the code
under test will.
"""

import hashlib
import hmac
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs

import pytest
import requests

from local import fake_sms
from local.fake_rbm import FEATURES, FakeRbm
from local.fake_sms import FakeSmsWebhook, FakeTwilio

PHONE = "+15550000001"
AGENT = "agent-1"
CONTENT = {"text": "hello"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rbm():
    with FakeRbm() as fake:
        yield fake


def create(rbm, phone=PHONE, message_id=None, body=None, agent=AGENT, encode=True):
    message_id = message_id or str(uuid.uuid4())
    path_phone = phone.replace("+", "%2B") if encode else phone
    params = {"agentId": agent} if message_id == "-" else {"messageId": message_id, "agentId": agent}
    return requests.post(
        f"{rbm.url}/v1/phones/{path_phone}/agentMessages",
        params=params,
        json=body if body is not None else {"contentMessage": CONTENT},
        timeout=5,
    )


def revoke(rbm, message_id, phone=PHONE, agent=AGENT):
    return requests.delete(
        f"{rbm.url}/v1/phones/{phone.replace('+', '%2B')}/agentMessages/{message_id}",
        params={"agentId": agent},
        timeout=5,
    )


def assert_google_error(response, code, status):
    assert response.status_code == code
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (code, status)
    assert error["message"]


# RBM: agentMessages.create


@pytest.mark.parametrize("encode", [True, False])
def test_create_answers_the_agent_message(rbm, encode):
    message_id = str(uuid.uuid4())
    response = create(
        rbm,
        message_id=message_id,
        body={"contentMessage": CONTENT, "ttl": "60s", "messageTrafficType": "TRANSACTION"},
        encode=encode,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == f"phones/{PHONE}/agentMessages/{message_id}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", body["sendTime"])
    assert (body["contentMessage"], body["ttl"], body["messageTrafficType"]) == (CONTENT, "60s", "TRANSACTION")
    assert rbm.messages[message_id] | {"send_time": None} == {
        "phone": PHONE,
        "agent_id": AGENT,
        "body": {"contentMessage": CONTENT, "ttl": "60s", "messageTrafficType": "TRANSACTION"},
        "state": "queued",
        "send_time": None,
        "duplicates": 0,
    }
    [record] = rbm.requests
    assert (
        record["method"],
        record["kind"],
        record["phone"],
        record["message_id"],
        record["agent_id"],
        record["status"],
    ) == ("POST", "create", PHONE, message_id, AGENT, 200)
    assert record["query"] == {"messageId": message_id, "agentId": AGENT}
    assert record["body"] == {"contentMessage": CONTENT, "ttl": "60s", "messageTrafficType": "TRANSACTION"}


@pytest.mark.parametrize(
    "body, params",
    [
        ({"contentMessage": CONTENT}, {"agentId": AGENT}),
        ({"contentMessage": CONTENT}, {"messageId": "m1"}),
        ({"contentMessage": CONTENT, "ttl": "60s", "expireTime": "2030-01-01T00:00:00Z"}, None),
        ({"ttl": "60s"}, None),
        ({"contentMessage": CONTENT, "ttl": "60"}, None),
        ({"contentMessage": CONTENT, "expireTime": "tomorrow"}, None),
        ({"contentMessage": CONTENT, "content_message": CONTENT}, None),
    ],
)
def test_create_rejects_bad_requests(rbm, body, params):
    params = params or {"messageId": "m1", "agentId": AGENT}
    response = requests.post(f"{rbm.url}/v1/phones/%2B15550000001/agentMessages", params=params, json=body, timeout=5)
    assert_google_error(response, 400, "INVALID_ARGUMENT")
    assert rbm.messages == {}


def test_create_accepts_expire_time(rbm):
    assert create(rbm, body={"contentMessage": CONTENT, "expireTime": "2030-01-01T00:00:00.5+02:00"}).status_code == 200


def test_create_rejects_a_phone_that_is_not_e164(rbm):
    assert_google_error(create(rbm, phone="15550000001"), 400, "INVALID_ARGUMENT")


def test_a_repeated_message_id_is_409_already_exists_and_not_queued_twice(rbm):
    assert create(rbm, message_id="m1").status_code == 200
    again = create(rbm, message_id="m1", body={"contentMessage": {"text": "other"}})
    assert_google_error(again, 409, "ALREADY_EXISTS")
    assert rbm.count("create", message_id="m1") == 2
    assert [r["duplicate"] for r in rbm.requests] == [False, True]
    assert rbm.messages["m1"]["duplicates"] == 1 and rbm.messages["m1"]["body"]["contentMessage"] == CONTENT
    assert create(rbm, message_id="m1", agent="agent-2").status_code == 200
    assert rbm.requests[-1]["duplicate"] is False  # the key is (agent, messageId)


def test_either_spelling_of_an_agent_id_names_the_same_agent(rbm):
    assert create(rbm, message_id="m1", agent=f"{AGENT}@rbm.goog").status_code == 200
    assert_google_error(create(rbm, message_id="m1", agent=AGENT), 409, "ALREADY_EXISTS")
    assert revoke(rbm, "m1", agent=AGENT).status_code == 200
    assert [r["agent_id"] for r in rbm.requests] == [f"{AGENT}@rbm.goog", AGENT, AGENT]  # as given


def test_an_id_used_by_an_agent_event_is_taken_for_messages_too(rbm):
    url = f"{rbm.url}/v1/phones/%2B15550000001/agentEvents"
    assert (
        requests.post(
            url, params={"eventId": "e1", "agentId": AGENT}, json={"eventType": "IS_TYPING"}, timeout=5
        ).status_code
        == 200
    )
    assert_google_error(
        requests.post(url, params={"eventId": "e1", "agentId": AGENT}, json={"eventType": "IS_TYPING"}, timeout=5),
        409,
        "ALREADY_EXISTS",
    )
    assert_google_error(create(rbm, message_id="e1"), 409, "ALREADY_EXISTS")
    assert rbm.messages == {}


def test_not_rcs_phone_gets_404_on_create_capabilities_and_events(rbm):
    rbm.set_phone(PHONE, "not_rcs")
    assert_google_error(create(rbm), 404, "NOT_FOUND")
    url = f"{rbm.url}/v1/phones/%2B15550000001"
    assert_google_error(
        requests.get(f"{url}/capabilities", params={"requestId": "r1", "agentId": AGENT}, timeout=5), 404, "NOT_FOUND"
    )
    assert_google_error(
        requests.post(
            f"{url}/agentEvents", params={"eventId": "e1", "agentId": AGENT}, json={"eventType": "IS_TYPING"}, timeout=5
        ),
        404,
        "NOT_FOUND",
    )
    assert rbm.messages == {}
    assert create(rbm, phone="+15550000002").status_code == 200  # other phones unaffected


def test_error_phone_gets_500(rbm):
    rbm.set_phone(PHONE, "error")
    assert_google_error(create(rbm), 500, "INTERNAL")
    assert rbm.messages == {}


def test_slow_phone_answers_late(rbm):
    rbm.set_phone(PHONE, "slow", delay=0.3)
    started = time.monotonic()
    assert create(rbm).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert create(rbm, phone="+15550000002").status_code == 200
    assert time.monotonic() - started < 0.3


def test_set_phone_rejects_unknown_modes(rbm):
    with pytest.raises(ValueError):
        rbm.set_phone(PHONE, "offline")


def test_scripted_creates_answer_in_turn_then_behave_normally(rbm):
    rbm.script("create", PHONE, [500, 429, 503, 403, 200])
    answers = [create(rbm, message_id="m1") for _ in range(6)]
    assert [a.status_code for a in answers] == [500, 429, 503, 403, 200, 409]
    for answer, status in zip(
        answers, ["INTERNAL", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "PERMISSION_DENIED"], strict=False
    ):
        assert_google_error(answer, answer.status_code, status)
    assert "Retry-After" not in answers[1].headers  # only when asked for
    assert rbm.messages["m1"]["duplicates"] == 1
    assert create(rbm, phone="+15550000002").status_code == 200  # scripts are per phone


@pytest.mark.parametrize("retry_after", ["7", "Wed, 21 Oct 2037 07:28:00 GMT"])
def test_scripted_429_and_503_carry_retry_after(rbm, retry_after):
    rbm.script("create", PHONE, [429, 503, 500], retry_after=retry_after)
    rbm.script("revoke", "m1", [503], retry_after=retry_after)
    answers = [create(rbm, message_id="m1") for _ in range(4)]
    assert [(a.status_code, a.headers.get("Retry-After")) for a in answers] == [
        (429, retry_after),
        (503, retry_after),
        (500, None),
        (200, None),
    ]
    throttled = revoke(rbm, "m1")
    assert_google_error(throttled, 503, "UNAVAILABLE")
    assert throttled.headers["Retry-After"] == retry_after and rbm.messages["m1"]["state"] == "queued"
    assert [r["retry_after"] for r in rbm.requests] == [retry_after, retry_after, None, None, retry_after]


def test_a_slow_create_is_queued_at_once_and_answered_late(rbm):
    rbm.set_latency("create", PHONE, 0.5)
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(first=create(rbm, message_id="m1")))
    started = time.monotonic()
    thread.start()
    deadline = time.monotonic() + 5
    while "m1" not in rbm.messages and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "m1" in rbm.messages and "first" not in answer  # queued while the caller still waits
    thread.join()
    assert answer["first"].status_code == 200 and time.monotonic() - started >= 0.5
    rbm.set_latency("create", PHONE, 0)
    assert create(rbm, phone="+15550000002").status_code == 200  # other phones answer at once


def test_a_dropped_create_is_queued_but_never_answered(rbm):
    rbm.drop("create", PHONE)
    with pytest.raises(requests.ConnectionError):
        create(rbm, message_id="m1")
    assert rbm.messages["m1"]["state"] == "queued"
    assert_google_error(create(rbm, message_id="m1"), 409, "ALREADY_EXISTS")  # the caller's retry
    assert [(r["status"], r["dropped"]) for r in rbm.requests] == [(200, True), (409, False)]


def test_a_dropped_revoke_revokes_and_its_retry_is_404(rbm):
    create(rbm, message_id="m1")
    rbm.drop("revoke", "m1")
    with pytest.raises(requests.ConnectionError):
        revoke(rbm, "m1")
    assert rbm.messages["m1"]["state"] == "revoked"
    assert_google_error(revoke(rbm, "m1"), 404, "NOT_FOUND")


def test_controls_name_create_or_revoke(rbm):
    for control in (
        lambda: rbm.drop("event", PHONE),
        lambda: rbm.set_latency("delete", PHONE, 1),
        lambda: rbm.script("capabilities", PHONE, [500]),
    ):
        with pytest.raises(ValueError):
            control()


def test_fail_share_is_repeatable_per_seed(rbm):
    def run(seed):
        rbm.reset()
        rbm.fail_share("create", 0.5, seed=seed)
        return [create(rbm).status_code for _ in range(30)]

    first = run(7)
    assert first == run(7)
    assert set(first) == {200, 500}
    rbm.fail_share("create", 1.0)
    assert create(rbm).status_code == 500
    rbm.fail_share("create", 0.0)
    assert create(rbm).status_code == 200


# RBM: users.batchGet


def batch_get(rbm, body):
    return requests.post(f"{rbm.url}/v1/users:batchGet", json=body, timeout=5)


def test_batch_get_reports_the_reachable_numbers_and_a_sample_from_500_on(rbm):
    rbm.set_phone("+15550000002", "not_rcs")
    few = batch_get(rbm, {"users": [PHONE, "+15550000002"], "agentId": AGENT})
    assert few.status_code == 200
    assert few.json() == {"reachableUsers": [PHONE]}  # proto3 JSON: fields at 0 are left out
    none = batch_get(rbm, {"users": ["+15550000002"], "agentId": AGENT})
    assert none.status_code == 200 and none.json() == {}  # and so is an empty list
    many = [f"+1555100{i:04d}" for i in range(600)]
    rbm.set_phone(many[0], "not_rcs")
    answer = batch_get(rbm, {"users": many, "agentId": AGENT}).json()
    assert len(answer["reachableUsers"]) == 599 and answer["totalRandomSampleUserCount"] == 450
    assert answer["reachableRandomSampleUserCount"] == 449
    assert rbm.count("batch_get") == 3


@pytest.mark.parametrize(
    "body",
    [
        {"users": [PHONE]},
        {"users": [], "agentId": AGENT},
        {"users": ["4155550123"], "agentId": AGENT},
        {"users": [PHONE], "agentId": AGENT, "extra": 1},
        {"users": [f"+1555200{i:04d}" for i in range(10_001)], "agentId": AGENT},
    ],
)
def test_batch_get_refuses_what_the_reference_does_not_describe(rbm, body):
    assert_google_error(batch_get(rbm, body), 400, "INVALID_ARGUMENT")


def test_batch_get_may_answer_stale_for_a_share_of_numbers_and_can_be_scripted(rbm):
    users = [f"+1555300{i:04d}" for i in range(200)]
    rbm.stale_share(0.25, seed=1)
    reachable = batch_get(rbm, {"users": users, "agentId": AGENT}).json()["reachableUsers"]
    assert 20 < len(users) - len(reachable) < 80  # all have RCS; the cache says some do not
    assert reachable == batch_get(rbm, {"users": users, "agentId": AGENT}).json()["reachableUsers"]  # repeatable
    rbm.script("batch_get", AGENT, [429], retry_after="3")
    throttled = batch_get(rbm, {"users": users, "agentId": AGENT})
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "3"


# RBM: agentMessages.delete


def test_revoke_a_queued_message_once(rbm):
    create(rbm, message_id="m1")
    response = revoke(rbm, "m1")
    assert (response.status_code, response.json()) == (200, {})
    assert rbm.messages["m1"]["state"] == "revoked"
    assert_google_error(revoke(rbm, "m1"), 404, "NOT_FOUND")
    assert rbm.count("revoke", message_id="m1") == 2 and rbm.count("revoke", status=404) == 1


def test_revoke_after_delivery_or_of_unknown_message_is_404(rbm):
    create(rbm, message_id="m1")
    assert rbm.mark_delivered("m1") is True
    assert rbm.mark_delivered("m1") is False
    assert_google_error(revoke(rbm, "m1"), 404, "NOT_FOUND")
    assert rbm.messages["m1"]["state"] == "delivered"
    assert_google_error(revoke(rbm, "unknown"), 404, "NOT_FOUND")
    assert rbm.mark_delivered("unknown") is False


def test_scripted_revokes_fail_without_revoking(rbm):
    create(rbm, message_id="m1")
    rbm.script("revoke", "m1", [503, 500])
    assert [revoke(rbm, "m1").status_code for _ in range(3)] == [503, 500, 200]
    assert rbm.messages["m1"]["state"] == "revoked"


def test_revoke_needs_agent_id(rbm):
    create(rbm, message_id="m1")
    response = requests.delete(f"{rbm.url}/v1/phones/+15550000001/agentMessages/m1", timeout=5)
    assert_google_error(response, 400, "INVALID_ARGUMENT")


# RBM: agentEvents and capabilities


def test_agent_event_is_echoed_with_its_name(rbm):
    response = requests.post(
        f"{rbm.url}/v1/phones/%2B15550000001/agentEvents",
        params={"eventId": "e1", "agentId": AGENT},
        json={"eventType": "READ", "messageId": "u1"},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.json() == {"name": f"phones/{PHONE}/agentEvents/e1", "eventType": "READ", "messageId": "u1"}
    assert rbm.count("event", message_id="u1", phone=PHONE) == 1


@pytest.mark.parametrize(
    "body, params",
    [
        ({"eventType": "DELIVERED"}, None),
        ({"eventType": "READ"}, None),
        ({"eventType": "IS_TYPING"}, {"agentId": AGENT}),
    ],
)
def test_bad_agent_events_are_400(rbm, body, params):
    params = params or {"eventId": "e1", "agentId": AGENT}
    response = requests.post(f"{rbm.url}/v1/phones/%2B15550000001/agentEvents", params=params, json=body, timeout=5)
    assert_google_error(response, 400, "INVALID_ARGUMENT")


def test_capabilities(rbm):
    response = requests.get(
        f"{rbm.url}/v1/phones/%2B15550000001/capabilities", params={"requestId": "r1", "agentId": AGENT}, timeout=5
    )
    assert (response.status_code, response.json()) == (200, {"features": FEATURES})
    assert "ACTION_VIEW_LOCATION" in FEATURES and len(FEATURES) == 7
    assert rbm.count("capabilities", phone=PHONE) == 1


def test_unknown_path_is_a_google_404(rbm):
    assert_google_error(requests.get(f"{rbm.url}/v1/agents", timeout=5), 404, "NOT_FOUND")


def test_reset_forgets_records_and_behaviour(rbm):
    rbm.set_phone(PHONE, "not_rcs")
    rbm.script("create", "+15550000002", [500])
    rbm.drop("create", "+15550000003")
    create(rbm, phone="+15550000004", message_id="m1")
    create(rbm)
    rbm.reset()
    assert rbm.requests == [] and rbm.messages == {}
    assert create(rbm).status_code == 200 and create(rbm, phone="+15550000002").status_code == 200
    assert create(rbm, phone="+15550000003").status_code == 200
    assert create(rbm, phone="+15550000004", message_id="m1").status_code == 200  # used ids forgotten too


def test_restart_keeps_the_url():
    fake = FakeRbm().start()
    url = fake.url
    fake.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/v1/phones/%2B15550000001/capabilities", timeout=2)
    fake.start()
    try:
        assert fake.url == url and create(fake).status_code == 200
    finally:
        fake.stop()


# SMS providers

SID, TOKEN, SECRET = "AC" + "1" * 32, "twilio-token", "webhook-secret"


@pytest.fixture
def twilio():
    with FakeTwilio(SID, TOKEN) as fake:
        yield fake


@pytest.fixture
def gateway():
    with FakeSmsWebhook(SECRET) as fake:
        yield fake


def twilio_send(fake, auth=(SID, TOKEN), timeout=5, **form):
    form = form or {"To": PHONE, "From": "+15557770000", "Body": "code 1234"}
    return requests.post(f"{fake.url}/2010-04-01/Accounts/{SID}/Messages.json", data=form, auth=auth, timeout=timeout)


def gateway_send(fake, payload=None, signature=None, timeout=5, key=None):
    """One signed request; a fresh message id (the idempotency key) unless `key` or `payload` names one."""
    payload = payload or {"to": PHONE, "text": "code 1234", "message_id": key or uuid.uuid4().hex}
    body = json.dumps(payload).encode()
    key = key or payload["message_id"]
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": key,
        "X-Signature": signature or fake.signature(body, key),
    }
    return requests.post(fake.url + "/send", data=body, headers=headers, timeout=timeout)


@pytest.fixture(params=["twilio", "webhook"])
def provider(request):
    """Either fake, with a function that sends one valid SMS through it."""
    fake = FakeTwilio(SID, TOKEN) if request.param == "twilio" else FakeSmsWebhook(SECRET)
    with fake:
        yield fake, (twilio_send if request.param == "twilio" else gateway_send)


def test_twilio_send_answers_201_with_a_message_resource(twilio):
    response = twilio_send(twilio)
    assert response.status_code == 201
    body = response.json()
    assert re.fullmatch(r"SM[0-9a-f]{32}", body["sid"])
    assert (body["status"], body["to"], body["from"], body["body"], body["account_sid"], body["num_segments"]) == (
        "queued",
        PHONE,
        "+15557770000",
        "code 1234",
        SID,
        "1",
    )
    assert parsedate_to_datetime(body["date_created"]).utcoffset().total_seconds() == 0
    [sent] = twilio.sent
    assert (sent["to"], sent["text"], sent["message_id"], sent["provider_id"]) == (
        PHONE,
        "code 1234",
        None,
        body["sid"],
    )
    assert sent["fields"]["From"] == "+15557770000" and sent["time"] > 0


def test_twilio_accepts_a_messaging_service_instead_of_from(twilio):
    response = twilio_send(twilio, To=PHONE, MessagingServiceSid="MG" + "2" * 32, Body="hi")
    assert response.status_code == 201
    assert response.json()["messaging_service_sid"] == "MG" + "2" * 32 and response.json()["from"] is None


@pytest.mark.parametrize("auth", [None, (SID, "wrong"), ("AC" + "9" * 32, TOKEN)])
def test_twilio_rejects_bad_auth(twilio, auth):
    response = twilio_send(twilio, auth=auth)
    assert response.status_code == 401
    assert response.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert twilio.count() == 0


@pytest.mark.parametrize(
    "form, code",
    [
        ({"From": "+15557770000", "Body": "hi"}, 21604),
        ({"To": PHONE, "From": "+15557770000"}, 21602),
        ({"To": PHONE, "Body": "hi"}, 21603),
        ({"To": "555", "From": "+15557770000", "Body": "hi"}, 21211),
    ],
)
def test_twilio_rejects_incomplete_messages(twilio, form, code):
    response = twilio_send(twilio, **form)
    assert response.status_code == 400
    assert response.json()["code"] == code and response.json()["status"] == 400
    assert twilio.count() == 0


def test_webhook_send_answers_accepted(gateway):
    response = gateway_send(gateway, key="m1")
    assert response.status_code == 200
    assert response.json() == {"id": gateway.sent[0]["provider_id"], "status": "accepted"}
    [sent] = gateway.sent
    assert (sent["to"], sent["text"], sent["message_id"]) == (PHONE, "code 1234", "m1")


def test_webhook_signature_is_hmac_sha256_of_version_timestamp_key_and_raw_body(gateway):
    body = b'{"to": "+15550000001", "text": "x", "message_id": "m2"}'
    mac = hmac.new(SECRET.encode(), b"v1:1700000000:m2:" + body, hashlib.sha256).hexdigest()
    assert gateway.signature(body, "m2", 1700000000) == f"t=1700000000,v1={mac}"


def _signed_post(gateway, body, headers):
    return requests.post(gateway.url, data=body, headers=headers, timeout=5)


BODY = b'{"to": "+15550000001", "text": "x", "message_id": "m1"}'


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no signature
        {"Idempotency-Key": "m1", "X-Signature": ""},
        {"Idempotency-Key": "m1", "X-Signature": "t=1700000000,v1=" + "0" * 64},
        {"Idempotency-Key": "m1", "X-Signature": "deadbeef"},
        # the scheme before timestamps: the body alone, replayable forever
        {
            "Idempotency-Key": "m1",
            "X-Signature": "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest(),
        },
    ],
    ids=["missing", "empty", "wrong", "malformed", "unversioned"],
)
def test_webhook_rejects_bad_signatures(gateway, headers):
    response = _signed_post(gateway, BODY, headers)
    assert (response.status_code, response.json()) == (401, {"code": "bad_signature", "error": "bad signature"})
    assert gateway.count() == 0


def test_webhook_signature_covers_the_idempotency_key(gateway):
    signature = gateway.signature(BODY, "m1")
    response = _signed_post(gateway, BODY, {"Idempotency-Key": "m9", "X-Signature": signature})
    assert response.status_code == 401 and gateway.count() == 0
    assert _signed_post(gateway, BODY, {"Idempotency-Key": "", "X-Signature": signature}).status_code == 401


@pytest.mark.parametrize("age", [301, -301, 3600])
def test_webhook_rejects_a_signature_older_or_newer_than_the_tolerance(gateway, age):
    signature = gateway.signature(BODY, "m1", int(time.time()) - age)
    response = _signed_post(gateway, BODY, {"Idempotency-Key": "m1", "X-Signature": signature})
    assert (response.status_code, response.json()["code"]) == (401, "stale_signature")
    assert gateway.count() == 0


def test_webhook_accepts_a_signature_within_the_tolerance(gateway):
    signature = gateway.signature(BODY, "m1", int(time.time()) - 290)
    assert _signed_post(gateway, BODY, {"Idempotency-Key": "m1", "X-Signature": signature}).status_code == 200


def test_webhook_answers_the_first_result_to_the_same_key_and_sends_nothing_more(gateway):
    first = gateway_send(gateway, key="m1")
    again = [gateway_send(gateway, key="m1") for _ in range(3)]
    assert [r.json() for r in again] == [first.json()] * 3 and all(r.status_code == 200 for r in again)
    assert gateway.count() == 1 and gateway.received == 4 and gateway.replayed == 3
    assert gateway_send(gateway, key="m2").json()["id"] != first.json()["id"] and gateway.count() == 2


def test_webhook_keeps_a_keys_first_result_for_24_hours(gateway, monkeypatch):
    clock = [time.time()]
    monkeypatch.setattr(fake_sms, "time", SimpleNamespace(time=lambda: clock[0], sleep=time.sleep))
    first = gateway_send(gateway, key="m1").json()
    clock[0] += 24 * 3600 - 1
    assert gateway_send(gateway, key="m1").json() == first and gateway.count() == 1
    clock[0] += 2
    assert gateway_send(gateway, key="m1").json()["id"] != first["id"] and gateway.count() == 2


def test_webhook_remembers_a_key_whose_send_failed_after_sending_but_not_one_that_sent_nothing(gateway):
    gateway.script_failure(PHONE, 502, sends=True)
    gateway.script_failure(PHONE, 502, sends=False)
    assert gateway_send(gateway, key="sent").status_code == 502
    assert gateway_send(gateway, key="sent").json() == {"id": gateway.sent[0]["provider_id"], "status": "accepted"}
    assert gateway_send(gateway, key="not-sent").status_code == 502
    assert gateway_send(gateway, key="not-sent").status_code == 200
    assert gateway.count() == 2 and gateway.replayed == 1


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"to": "+15550000001", "text": "x"}', b'{"to": "0155", "text": "x", "message_id": "m1"}'],
)
def test_webhook_rejects_malformed_bodies(gateway, body):
    headers = {"Idempotency-Key": "m1", "X-Signature": gateway.signature(body, "m1")}
    response = requests.post(gateway.url, data=body, headers=headers, timeout=5)
    assert response.status_code == 400 and response.json()["error"]
    assert gateway.count() == 0


def test_scripted_refusals_send_nothing(provider):
    fake, send = provider
    fake.script([400, 429, 503, 200])
    statuses = [send(fake).status_code for _ in range(5)]
    assert statuses[:3] == [400, 429, 503] and all(s < 300 for s in statuses[3:])
    assert fake.count() == 2 and fake.count(to=PHONE) == 2 and fake.count(to="+15550000009") == 0
    assert fake.received == 5 and len(fake.received_at) == 5


def test_scripted_server_errors_send_then_fail(provider):
    fake, send = provider
    fake.script([500, 502, 504])
    assert [send(fake).status_code for _ in range(3)] == [500, 502, 504]
    assert fake.count() == 3  # the worst case of "may have been processed"


def test_twilio_errors_use_twilio_bodies(twilio):
    twilio.script([429])
    body = twilio_send(twilio).json()
    assert (body["status"], body["code"]) == (429, 20429)


def test_twilio_invalid_number_names_the_number_in_full_as_twilio_does(twilio):
    twilio.script([400])
    body = twilio_send(twilio).json()
    assert body == {
        "code": 21211,
        "message": f"The 'To' number {PHONE} is not a valid phone number.",
        "more_info": "https://www.twilio.com/docs/errors/21211",
        "status": 400,
    }
    assert (
        twilio_send(twilio, To="555", From="+15557770000", Body="x").json()["message"]
        == "The 'To' number 555 is not a valid phone number."
    )


def test_gateway_errors_carry_a_code_and_may_name_the_number(gateway):
    gateway.script([400, 503])
    assert gateway_send(gateway).json() == {
        "code": "invalid_to",
        "error": f"{PHONE} is not a phone number we can send to",
    }
    assert gateway_send(gateway).json() == {"code": "http_503", "error": f"gateway error 503 sending to {PHONE}"}
    assert gateway.count() == 0 and gateway.received == 2


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_comes_with_429_and_503_once_set(provider, status):
    fake, send = provider
    fake.script([status, 500])
    assert "Retry-After" not in send(fake).headers
    fake.reset()
    fake.set_retry_after(7)
    fake.script([status, 500])
    assert send(fake).headers["Retry-After"] == "7"
    assert "Retry-After" not in send(fake).headers  # only on the statuses that say "come back later"


@pytest.mark.parametrize(
    "reset, error", [(True, "Connection aborted"), (False, "Remote end closed connection without response")]
)
def test_drop_reads_the_whole_request_sends_and_answers_nothing(provider, reset, error):
    fake, send = provider
    fake.drop(reset=reset)
    with pytest.raises(requests.ConnectionError, match=error):
        send(fake)
    assert fake.received == 1 and fake.count(to=PHONE) == 1  # the SMS went out: the worst case for the caller
    [sent] = fake.sent
    assert sent["text"] == "code 1234"  # the body was read in full
    fake.reset()
    assert send(fake).status_code < 300 and fake.count() == 1


@pytest.mark.parametrize("sends", [True, False], ids=["sent", "not-sent"])
@pytest.mark.parametrize(
    "failure, error",
    [
        (500, None),
        (502, None),
        (504, None),
        ("reset", requests.ConnectionError),
        ("close", requests.ConnectionError),
        ("timeout", requests.ReadTimeout),
    ],
)
def test_a_scripted_failure_for_one_number_sends_or_not_as_told(provider, failure, error, sends):
    fake, send = provider
    fake.stall = 0.5
    fake.script_failure(PHONE, failure, sends=sends)
    if error is None:
        assert send(fake).status_code == failure
    else:
        with pytest.raises(error):
            send(fake, timeout=0.2)
    assert fake.received == 1 and fake.count(to=PHONE) == int(sends)
    assert send(fake).status_code < 300  # the script is used up: the next send is normal


def test_sms_fail_share_is_repeatable(provider):
    fake, send = provider

    def run():
        fake.reset()
        fake.fail_share(0.5, seed=3)
        return [send(fake).status_code for _ in range(20)]

    first = run()
    assert first == run() and 503 in first and len(set(first)) == 2
    assert fake.count() == 20 - first.count(503)


def test_delay_answers_late(provider):
    fake, send = provider
    fake.set_delay(0.3)
    started = time.monotonic()
    assert send(fake).status_code < 300
    assert time.monotonic() - started >= 0.3


def test_hold_records_the_send_then_blocks_the_answer_until_release(provider):
    fake, send = provider
    fake.hold()
    answers = []
    caller = threading.Thread(target=lambda: answers.append(send(fake)))
    caller.start()
    assert fake.wait_sent(1, timeout=5)  # the SMS went out ...
    caller.join(0.2)
    assert caller.is_alive() and answers == []  # ... but the caller has no answer yet
    fake.release()
    caller.join(5)
    assert answers[0].status_code < 300 and fake.count() == 1


def test_a_caller_that_gives_up_during_hold_still_sent(provider):
    fake, send = provider
    fake.hold()
    with pytest.raises(requests.Timeout):
        send(fake, timeout=0.3)
    assert fake.count() == 1
    fake.release()
    assert send(fake).status_code < 300 and fake.count() == 2


def test_sms_reset_forgets_and_releases(provider):
    fake, send = provider
    fake.script([500])
    fake.set_delay(5)
    fake.hold()
    fake.reset()
    started = time.monotonic()
    assert send(fake).status_code < 300 and fake.count() == 1
    assert time.monotonic() - started < 2


# Command line


@pytest.mark.parametrize(
    "args, check",
    [
        (
            ["local.fake_rbm", "--not-rcs", PHONE],
            lambda url: (
                requests.get(
                    f"{url}/v1/phones/%2B15550000001/capabilities", params={"requestId": "r", "agentId": "a"}, timeout=5
                ).status_code
                == 404
            ),
        ),
        (
            ["local.fake_sms", "twilio", "--account-sid", SID, "--auth-token", TOKEN],
            lambda url: (
                requests.post(
                    f"{url}/2010-04-01/Accounts/{SID}/Messages.json",
                    data={"To": PHONE, "From": "+15557770000", "Body": "x"},
                    auth=(SID, TOKEN),
                    timeout=5,
                ).status_code
                == 201
            ),
        ),
        (
            ["local.fake_sms", "webhook", "--secret", SECRET],
            lambda url: requests.post(url, data=b"{}", headers={"X-Signature": "x"}, timeout=5).status_code == 401,
        ),
    ],
)
def test_command_line_prints_the_url_and_serves(args, check):
    process = subprocess.Popen(
        [sys.executable, "-m", *args, "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert check(url)
    finally:
        process.terminate()
        process.wait(5)


# Twilio's status callbacks and Messages list.


class _Sink(fake_sms.FakeServer):
    """Records the status callbacks posted to it."""

    def __init__(self):
        super().__init__()
        self.posts: list = []

    def handle(self, request):
        with self._lock:
            self.posts.append(request)
        return 200, {}


def test_the_fakes_twilio_signature_is_twilios_published_example():
    # Twilio's "Webhooks security" page: auth token 12345, this URL and these fields.
    fields = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert fake_sms.twilio_signature("12345", url, fields) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_twilio_calls_back_signed_late_duplicated_and_reversed_as_scripted(twilio):
    with _Sink() as sink:
        callback = f"{sink.url}/status?message_id=m-1"
        twilio.script_statuses(PHONE, [("sent", None), ("undelivered", "30003")], duplicate=True, reverse=True)
        response = twilio_send(twilio, To=PHONE, From="+15557770000", Body="code", StatusCallback=callback)
        assert response.status_code == 201 and not sink.posts  # late: after the answer
        assert twilio.wait_callbacks(4)
        posts = [{k: v[0] for k, v in parse_qs(p.body.decode()).items()} for p in sink.posts]
    assert [(p["MessageStatus"], p.get("ErrorCode")) for p in posts] == [
        ("undelivered", "30003"),
        ("undelivered", "30003"),
        ("sent", None),
        ("sent", None),
    ]
    assert {p["MessageSid"] for p in posts} == {response.json()["sid"]} and posts[0]["To"] == PHONE
    for request, fields in zip(sink.posts, posts, strict=True):
        assert request.path == "/status" and request.query == {"message_id": "m-1"}
        assert request.headers["X-Twilio-Signature"] == fake_sms.twilio_signature(TOKEN, callback, fields)


def test_twilio_calls_back_after_a_500_that_sent(twilio):
    with _Sink() as sink:
        twilio.script([500])
        response = twilio_send(twilio, To=PHONE, From="+15557770000", Body="code", StatusCallback=sink.url)
        assert response.status_code == 500
        assert twilio.wait_callbacks(2)
        assert len(sink.posts) == 2


def _list(fake, **query):
    response = requests.get(
        f"{fake.url}/2010-04-01/Accounts/{SID}/Messages.json", params=query, auth=(SID, TOKEN), timeout=5
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_twilio_lists_messages_newest_first_filtered_and_paged(twilio):
    other = "+15550009999"
    for to in (PHONE, other, PHONE):
        twilio_send(twilio, To=to, From="+15557770000", Body=f"to {to}")
        time.sleep(0.01)
    page = _list(twilio, To=PHONE, PageSize=1)
    assert [m["to"] for m in page["messages"]] == [PHONE] and page["next_page_uri"]
    second = requests.get(twilio.url + page["next_page_uri"], auth=(SID, TOKEN), timeout=5).json()
    assert second["next_page_uri"] is None and second["messages"][0]["sid"] != page["messages"][0]["sid"]
    everything = _list(twilio)["messages"]
    created = [parsedate_to_datetime(m["date_created"]) for m in everything]
    assert len(everything) == 3 and created == sorted(created, reverse=True)
    assert [m["status"] for m in everything] == ["delivered"] * 3  # at their last status
    today = parsedate_to_datetime(everything[0]["date_sent"]).strftime("%Y-%m-%d")
    assert len(_list(twilio, DateSent=today)["messages"]) == 3
    assert len(_list(twilio, **{"DateSent>": "2999-01-01"})["messages"]) == 0
    assert len(_list(twilio, **{"DateSent<": "2000-01-01"})["messages"]) == 0
    assert (
        requests.get(
            f"{twilio.url}/2010-04-01/Accounts/{SID}/Messages.json", params={"DateSent": "yesterday"}, auth=(SID, TOKEN)
        ).status_code
        == 400
    )


def test_a_queued_message_has_no_date_sent_and_no_date_filter_finds_it(twilio):
    twilio.script_statuses(PHONE, [("queued", None)])
    twilio_send(twilio)
    (listed,) = _list(twilio)["messages"]
    assert (listed["status"], listed["date_sent"]) == ("queued", None)
    assert _list(twilio, **{"DateSent>": "2000-01-01"})["messages"] == []
