"""The RBM client's typed outcomes and bounded retries, against the local fake platform."""

import pytest
import requests

from functions.rbm import Outcome, RbmClient
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


@pytest.mark.parametrize("status, outcome", [(404, Outcome.NOT_FOUND), (400, Outcome.INVALID), (403, Outcome.FORBIDDEN),
                                             (409, Outcome.INVALID)])
def test_client_errors_are_typed_outcomes_and_not_retried(rbm, status, outcome):
    rbm.script("create", PHONE, [status])
    result = client(rbm).create_message(PHONE, "m1", AGENT, {"text": "hi"})
    assert (result.outcome, result.status) == (outcome, status)
    assert f"RBM {status}" in result.error
    assert rbm.count("create") == 1


def test_429_and_5xx_are_retried_then_succeed(rbm):
    rbm.script("create", PHONE, [429, 500, 503])
    assert client(rbm, retry_seconds=5).create_message(PHONE, "m1", AGENT, {"text": "hi"}).outcome is Outcome.OK
    assert rbm.count("create") == 4


def test_failures_past_the_retry_bound_are_transient(rbm):
    rbm.set_phone(PHONE, "error")
    result = client(rbm, retry_seconds=0.5).create_message(PHONE, "m1", AGENT, {"text": "hi"})
    assert (result.outcome, result.status) == (Outcome.TRANSIENT, 500)


def test_agent_events_and_capabilities(rbm):
    c = client(rbm)
    assert c.send_event(PHONE, AGENT, "IS_TYPING").outcome is Outcome.OK
    assert c.send_event(PHONE, AGENT, "READ", message_id="u1").outcome is Outcome.OK
    [typing, read] = [r for r in rbm.requests if r["kind"] == "event"]
    assert typing["body"] == {"eventType": "IS_TYPING"} and read["body"] == {"eventType": "READ", "messageId": "u1"}
    assert c.capabilities(PHONE, AGENT).outcome is Outcome.OK
    rbm.set_phone(PHONE, "not_rcs")
    assert c.capabilities(PHONE, AGENT).outcome is Outcome.NOT_FOUND


def test_an_unreachable_platform_is_transient():
    result = RbmClient(requests.Session(), "http://127.0.0.1:9", 0.3).revoke_message(PHONE, "m1", AGENT)
    assert (result.outcome, result.status) == (Outcome.TRANSIENT, None)
