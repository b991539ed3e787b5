"""The RBM client's typed outcomes and bounded retries, against the local fake platform."""

import json
import time

import pytest
import requests

from functions import rbm_create
from functions.rbm import RETRY_AFTER_CAP, Outcome, RbmClient
from functions.transitions import Fact
from local.fake_rbm import FakeRbm

PHONE, AGENT = "+447700900321", "agent@rbm.goog"


@pytest.fixture
def rbm():
    with FakeRbm() as fake:
        yield fake


def client(rbm, retry_seconds=1.0):
    return RbmClient(requests.Session(), rbm.url, retry_seconds)


def test_create_then_revoke_then_revoke_again(rbm):
    c = client(rbm)
    assert c.create_message(PHONE, "m1", AGENT, {"text": "hi"}).outcome is Outcome.OK
    assert c.revoke_message(PHONE, "m1", AGENT).outcome is Outcome.OK
    assert c.revoke_message(PHONE, "m1", AGENT).outcome is Outcome.NOT_FOUND


@pytest.mark.parametrize(
    "status, outcome",
    [
        (404, Outcome.NOT_FOUND),
        (400, Outcome.INVALID),
        (403, Outcome.FORBIDDEN),
        (409, Outcome.ALREADY_EXISTS),
        (412, Outcome.INVALID),
    ],
)
def test_client_errors_are_typed_outcomes_and_not_retried(rbm, status, outcome):
    rbm.script("create", PHONE, [status])
    result = client(rbm).create_message(PHONE, "m1", AGENT, {"text": "hi"})
    assert (result.outcome, result.status) == (outcome, status)
    assert f"RBM {status}" in result.error
    assert rbm.count("create") == 1


def test_a_create_answered_409_was_accepted_before(rbm):
    c = client(rbm)
    assert c.create_message(PHONE, "m1", AGENT, {"text": "hi"}).outcome is Outcome.OK
    again = c.create_message(PHONE, "m1", AGENT, {"text": "hi"})
    assert (again.outcome, again.status) == (Outcome.ALREADY_EXISTS, 409)
    assert rbm_create.CREATE_FACTS[again.outcome] is Fact.ACCEPTED  # SENT, never FAILED
    assert len(rbm.messages) == 1


def test_a_create_accepted_then_dropped_is_retried_and_found_accepted(rbm):
    rbm.drop("create", PHONE)
    result = client(rbm, retry_seconds=3).create_message(PHONE, "m1", AGENT, {"text": "hi"})
    assert (result.outcome, result.may_have_acted) == (Outcome.ALREADY_EXISTS, True)
    assert rbm_create.CREATE_FACTS[result.outcome] is Fact.ACCEPTED
    assert [r["status"] for r in rbm.requests] == [200, 409] and rbm.messages["m1"]["state"] == "queued"


@pytest.mark.parametrize(
    "first, uncertain", [("drop", True), (500, True), (502, True), (504, True), (503, False), (429, False)]
)
def test_a_revoke_retried_after_a_failure_that_may_have_revoked_it_says_so(rbm, first, uncertain):
    c = client(rbm, retry_seconds=3)
    c.create_message(PHONE, "m1", AGENT, {"text": "hi"})
    if first == "drop":
        rbm.drop("revoke", "m1")  # the DELETE revokes it; its answer is lost
    else:
        rbm.script("revoke", "m1", [first])
    result = c.revoke_message(PHONE, "m1", AGENT)
    expected = Outcome.NOT_FOUND if first == "drop" else Outcome.OK
    assert (result.outcome, result.may_have_acted) == (expected, uncertain)
    assert rbm.count("revoke") == 2


def test_retry_after_is_waited_out_when_it_fits_the_bound(rbm):
    rbm.script("create", PHONE, [429], retry_after="1")
    result = client(rbm, retry_seconds=3).create_message(PHONE, "m1", AGENT, {"text": "hi"})
    assert result.outcome is Outcome.OK
    first, second = (r["time"] for r in rbm.requests)
    assert second - first >= 1.0


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("header, expected", [("30", 30.0), ("100000", RETRY_AFTER_CAP)])
def test_retry_after_past_the_bound_is_transient_and_carries_the_wait(rbm, status, header, expected):
    rbm.script("revoke", "m1", [status], retry_after=header)
    started = time.monotonic()
    result = client(rbm, retry_seconds=2).revoke_message(PHONE, "m1", AGENT)
    assert time.monotonic() - started < 1.5  # no pointless wait nor retry inside the bound
    assert (result.outcome, result.status, result.retry_after, result.may_have_acted) == (
        Outcome.TRANSIENT,
        status,
        expected,
        False,
    )
    assert rbm.count("revoke") == 1


def test_retry_after_as_an_http_date(rbm):
    rbm.script("create", PHONE, [503], retry_after="Wed, 21 Oct 2037 07:28:00 GMT")
    result = client(rbm, retry_seconds=1).create_message(PHONE, "m1", AGENT, {"text": "hi"})
    assert (result.outcome, result.retry_after) == (Outcome.TRANSIENT, RETRY_AFTER_CAP)


def test_a_create_that_takes_more_than_10_s_is_answered(rbm):
    rbm.set_latency("create", PHONE, 11)
    result = client(rbm, retry_seconds=0).create_message(PHONE, "m1", AGENT, {"text": "hi"})
    assert (result.outcome, rbm.count("create")) == (Outcome.OK, 1)


def test_429_and_5xx_are_retried_then_succeed(rbm):
    rbm.script("create", PHONE, [429, 500, 503])
    assert client(rbm, retry_seconds=5).create_message(PHONE, "m1", AGENT, {"text": "hi"}).outcome is Outcome.OK
    assert rbm.count("create") == 4


@pytest.mark.parametrize("header", ["0", "Mon, 01 Jan 2024 00:00:00 GMT"], ids=["zero", "past-date"])
def test_a_retry_after_of_now_still_backs_off(rbm, header):
    # "Retry-After: 0", or a date already past (clock skew), allows a retry at once, not a storm of them
    rbm.script("create", PHONE, [429] * 1000, retry_after=header)
    assert (
        client(rbm, retry_seconds=1.0).create_message(PHONE, "m1", AGENT, {"text": "hi"}).outcome is Outcome.TRANSIENT
    )
    assert rbm.count("create") <= 10


def test_failures_past_the_retry_bound_are_transient(rbm):
    rbm.set_phone(PHONE, "error")
    result = client(rbm, retry_seconds=0.5).create_message(PHONE, "m1", AGENT, {"text": "hi"})
    assert (result.outcome, result.status) == (Outcome.TRANSIENT, 500)


def test_an_unreachable_platform_is_transient():
    result = RbmClient(requests.Session(), "http://127.0.0.1:9", 0.3).revoke_message(PHONE, "m1", AGENT)
    assert (result.outcome, result.status, result.may_have_acted) == (Outcome.TRANSIENT, None, False)  # never connected


def test_a_key_file_makes_the_credentials(monkeypatch, tmp_path):
    # The key is read from the file the secret is mounted as, never from the environment.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from functions import rbm

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = {
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": "k1",
        "private_key": pem.decode(),
        "client_email": "rbm@demo.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    path = tmp_path / "key.json"
    path.write_text(json.dumps(key))
    monkeypatch.setenv("RBM_API_ENDPOINT", "https://rcsbusinessmessaging.googleapis.com")
    monkeypatch.setenv("RBM_SERVICE_ACCOUNT_KEY_FILE", str(path))
    session = rbm._session()
    assert session.credentials.service_account_email == "rbm@demo.iam.gserviceaccount.com"
    assert session.credentials.scopes == [rbm.SCOPE]
