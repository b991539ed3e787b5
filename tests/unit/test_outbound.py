"""send_message's request rules, with no I/O."""

from datetime import datetime, timedelta, timezone

import pytest

from functions.model import Fallback, State
from functions.outbound import InvalidRequest, parse

OK = {"phone": "+14155550123", "content": {"text": "hi"}}


def test_minimal_request_gets_a_generated_uuid_and_the_default_agent():
    wanted = parse(OK, "default-agent")
    assert wanted.agent_id == "default-agent" and len(wanted.message_id) == 36
    assert parse(OK | {"message_id": wanted.message_id.upper()}, "a").message_id == wanted.message_id


def test_record_is_pending_with_its_deadline_and_fallback():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    wanted = parse(OK | {"revoke_after_seconds": 60, "fallback": {"text": "sms", "time_sensitive": True}}, "a")
    record = wanted.record(now, resend_after=30)
    assert (record.state, record.fallback, record.time_sensitive) == (State.PENDING, Fallback.WAITING, True)
    assert record.revoke_at == now + timedelta(seconds=60) and record.next_action_at == now + timedelta(seconds=30)
    assert parse(OK, "a").record(now, 30).fallback is Fallback.NONE


@pytest.mark.parametrize("change, reason", [
    ({"phone": "+0123456789"}, "E.164"),
    ({"phone": "+1 415 555 0123"}, "E.164"),
    ({"content": "hi"}, "content"),
    ({"message_id": 5}, "UUID"),
    ({"revoke_after_seconds": 9}, "revoke_after_seconds"),
    ({"revoke_after_seconds": 31 * 86400}, "revoke_after_seconds"),
    ({"revoke_after_seconds": True}, "revoke_after_seconds"),
    ({"traffic_type": "authentication"}, "traffic_type"),
    ({"fallback": "text"}, "fallback"),
    ({"fallback": {}}, "fallback.text"),
    ({"fallback": {"text": "x", "time_sensitive": 1}}, "time_sensitive"),
])
def test_each_rule_names_what_is_wrong(change, reason):
    with pytest.raises(InvalidRequest, match=reason):
        parse(OK | change, "a")


def test_no_agent_anywhere_is_refused():
    with pytest.raises(InvalidRequest, match="agent_id"):
        parse(OK, "")
